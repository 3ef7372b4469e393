<?php
// Seeds a fresh WordPress from the spec the twin is seeded from (JSON, see estate.py):
// users with their roles and registration dates, comments of every status and type with
// their authors' email, IP address and user agent, and the application passwords the tests
// use. Prints what the tests need to know, as JSON, on its last line.
// php seed.php SITE_ROOT SPEC.json
$_SERVER['HTTP_HOST'] = '127.0.0.1';
$_SERVER['REQUEST_URI'] = '/';
require $argv[1] . '/wp-load.php';
require_once ABSPATH . 'wp-admin/includes/user.php';
$spec = json_decode(file_get_contents($argv[2]), true);

update_option('permalink_structure', '/%postname%/');
delete_option('rewrite_rules');
// Roles a plugin would register (WooCommerce's customer and shop_manager), as it does.
foreach ($spec['roles'] ?? [] as $role => $label) {
    if (!get_role($role)) {
        add_role($role, $label, ['read' => true]);
    }
}
if (isset($spec['options'])) {
    foreach ($spec['options'] as $name => $value) {
        update_option($name, $value);
    }
}

// The application password is created through WordPress's own API, then its hash replaced
// by that of a fixed password (WordPress strips everything but letters and digits).
function pin_app_password($user_id, $password) {
    WP_Application_Passwords::create_new_application_password($user_id, ['name' => 'contract-tests']);
    $items = get_user_meta($user_id, '_application_passwords', true);
    $items[0]['password'] = wp_hash_password(preg_replace('/[^a-z\d]/i', '', $password));
    update_user_meta($user_id, '_application_passwords', $items);
}
pin_app_password(1, $spec['app_password']);
// The install's own moment would differ from the twin's: the admin registered at a fixed one.
global $wpdb;
$wpdb->update($wpdb->users, ['user_registered' => '2024-01-01 00:00:00'], ['ID' => 1]);
clean_user_cache(1);

// The sample comment and post's comment come with the install: the spec says what exists.
foreach (get_comments(['status' => 'all', 'type' => 'all']) as $comment) {
    wp_delete_comment($comment->comment_ID, true);
}

$ids = ['admin' => 1];
foreach ($spec['users'] as $user) {
    $id = wp_insert_user([
        'user_login' => $user['login'], 'user_email' => $user['email'],
        'user_pass' => wp_generate_password(20), 'display_name' => $user['display_name'],
        'first_name' => $user['first_name'] ?? '', 'last_name' => $user['last_name'] ?? '',
        'role' => $user['role'], 'user_registered' => $user['registered'],
    ]);
    if (is_wp_error($id)) {
        fwrite(STDERR, "user {$user['login']}: " . $id->get_error_message() . "\n");
        exit(1);
    }
    foreach ($user['meta'] ?? [] as $key => $value) {
        update_user_meta($id, $key, $value);
    }
    $ids[$user['login']] = $id;
}
$subscriber = $spec['subscriber_login'];
pin_app_password($ids[$subscriber], $spec['subscriber_password']);

$post = wp_insert_post(['post_title' => 'Hello from the shop', 'post_status' => 'publish',
                        'post_content' => 'A post to comment on.', 'post_author' => 1]);
$comment_ids = [];
foreach ($spec['comments'] as $comment) {
    $id = wp_insert_comment([
        'comment_post_ID' => $post, 'comment_author' => $comment['author_name'],
        'comment_author_email' => $comment['author_email'],
        'comment_author_url' => $comment['author_url'] ?? '',
        'comment_author_IP' => $comment['ip'], 'comment_agent' => $comment['user_agent'],
        'comment_date_gmt' => $comment['date_gmt'], 'comment_date' => $comment['date_gmt'],
        'comment_content' => $comment['content'], 'comment_type' => $comment['type'],
        'comment_approved' => $comment['status'] === 'hold' ? 0 : 1,
        'user_id' => isset($comment['user']) ? $ids[$comment['user']] : 0,
    ]);
    if ($comment['status'] === 'spam') {
        wp_spam_comment($id);
    } elseif ($comment['status'] === 'trash') {
        wp_trash_comment($id);
        // When it was trashed: what WordPress's scheduled delete reads.
        update_comment_meta($id, '_wp_trash_meta_time', strtotime($comment['trashed_gmt'] . ' UTC'));
    }
    $comment_ids[] = $id;
}
echo json_encode(['users' => $ids, 'comments' => $comment_ids, 'post' => $post,
                  'subscriber_user' => $subscriber,
                  'subscriber_password' => $spec['subscriber_password']]), "\n";
