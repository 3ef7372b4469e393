<?php
// Installs WordPress into the database its wp-config.php names: wp-admin's own installer.
// php install.php SITE_ROOT
$_SERVER['HTTP_HOST'] = '127.0.0.1';
$_SERVER['REQUEST_URI'] = '/';
define('WP_INSTALLING', true);
require $argv[1] . '/wp-load.php';
require_once ABSPATH . 'wp-admin/includes/upgrade.php';
$result = wp_install('privacy-ledger contract site', 'admin', 'admin@example.test', true, '',
                     wp_generate_password(24), 'en_US');
echo json_encode(['user_id' => $result['user_id']]), "\n";
