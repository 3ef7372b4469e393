"""The WooCommerce twin's answers about the shop itself: `GET /wc/v3/system_status` (the active
plugins), `GET /wc/v3/settings/<group>` and `GET /wc-admin/options?options=…`, in the shapes
WooCommerce gives them. Recorded from WooCommerce's source (woocommerce/woocommerce,
plugins/woocommerce/):

- system_status: includes/rest-api/Controllers/Version2/class-wc-rest-system-status-v2-
  controller.php — `get_items_permissions_check` (wc_rest_check_manager_permissions
  'system_status' 'read', i.e. manage_woocommerce; else 401/403 woocommerce_rest_cannot_view
  "Sorry, you cannot list resources."); `format_plugin_data` gives each active plugin as
  {plugin, name, version, version_latest, url, author_name, author_url, network_activated}
  (the schema says "array of string": the code returns objects); `_fields` limits the
  sections computed (get_fields_for_response).
- settings: includes/rest-api/Controllers/Version2/class-wc-rest-setting-options-v2-
  controller.php — a group lists only settings whose type passes `is_setting_type_valid`
  (text, email, number, color, password, textarea, select, multiselect, radio, checkbox,
  image_width, thumbnail_cropping): the six retention options are `relative_date_selector`
  (includes/admin/settings/class-wc-settings-accounts.php) and are left out; asking for one
  by id answers 404 rest_setting_setting_invalid "Invalid setting.". Same permission as
  system_status ('settings' 'read').
- wc-admin/options: src/Admin/API/Options.php (deprecated since 6.2, still registered) —
  `{option: get_option(option)}` for `options=a,b`; an option not in its short list needs
  manage_options (an administrator) on a production site, else 401/403
  woocommerce_rest_cannot_view "Sorry, you cannot view these options."; on a site whose
  wp_get_environment_type() is not "production" such options are refused to everyone, with
  a longer message. Consumer keys authenticate there too
  (WC_REST_Authentication::is_request_to_rest_api accepts `wc-`).
"""

from __future__ import annotations

from typing import Any

from sandbox.server import Reply

# The account group's settings as class-wc-settings-accounts.php declares them (id, title,
# type, default); a relative_date_selector's value is stored as {"number", "unit"}.
ACCOUNT_SETTINGS: tuple[tuple[str, str, str, Any], ...] = (
    ("woocommerce_enable_guest_checkout", "Guest checkout", "checkbox", "yes"),
    ("woocommerce_enable_checkout_login_reminder", "Login", "checkbox", "no"),
    ("woocommerce_enable_signup_and_login_from_checkout", "Account creation", "checkbox",
     "no"),
    ("woocommerce_enable_myaccount_registration", "", "checkbox", "no"),
    ("woocommerce_erasure_request_removes_order_data", "Account erasure requests",
     "checkbox", "no"),
    ("woocommerce_erasure_request_removes_download_data", "", "checkbox", "no"),
    ("woocommerce_allow_bulk_remove_personal_data", "Personal data removal", "checkbox", "no"),
    ("woocommerce_registration_privacy_policy_text", "Registration privacy policy",
     "textarea", "Your personal data will be used to support your experience throughout "
                 "this website, to manage access to your account, and for other purposes "
                 "described in our [privacy_policy]."),
    ("woocommerce_delete_inactive_accounts", "Retain inactive accounts",
     "relative_date_selector", {"number": "", "unit": "months"}),
    ("woocommerce_trash_pending_orders", "Retain pending orders", "relative_date_selector", ""),
    ("woocommerce_trash_failed_orders", "Retain failed orders", "relative_date_selector", ""),
    ("woocommerce_trash_cancelled_orders", "Retain cancelled orders", "relative_date_selector",
     ""),
    ("woocommerce_anonymize_refunded_orders", "Retain refunded orders",
     "relative_date_selector", {"number": "", "unit": "months"}),
    ("woocommerce_anonymize_completed_orders", "Retain completed orders",
     "relative_date_selector", {"number": "", "unit": "months"}),
)
# What is_setting_type_valid accepts.
REST_TYPES = ("text", "email", "number", "color", "password", "textarea", "select",
              "multiselect", "radio", "checkbox", "image_width", "thumbnail_cropping")
# Options.php's list readable with manage_woocommerce (the ones used here are none of them).
SHOP_MANAGER_OPTIONS: frozenset[str] = frozenset()


def _error(status: int, code: str, message: str) -> Reply:
    return Reply(status, {"code": code, "message": message, "data": {"status": status}})


class ShopAdmin:
    """What a shop answers about itself: its active plugins, its options, and which of these
    the key's user may read (`role`: administrator, shop_manager, or customer)."""

    def __init__(self) -> None:
        self.plugins: list[dict[str, Any]] = [plugin("woocommerce/woocommerce.php",
                                                     "WooCommerce", "10.3.0", "Automattic")]
        self.options: dict[str, Any] = {sid: default for sid, _, _, default in ACCOUNT_SETTINGS}
        self.role = "administrator"
        self.wp_cron = True
        # wp_get_environment_type(): Options.php refuses unlisted options off production.
        self.environment = "production"

    def _manager(self) -> bool:
        return self.role in ("administrator", "shop_manager")

    def system_status(self, collection: str, fields: list[str]) -> Reply:
        if not self._manager():
            return _error(403, "woocommerce_rest_cannot_view", "Sorry, you cannot list resources.")
        home = collection.split("/wp-json/")[0]
        status: dict[str, Any] = {
            "environment": {"home_url": home, "site_url": home, "version": "10.3.0",
                            "wp_version": "6.8.3", "wp_multisite": False,
                            "wp_cron": self.wp_cron, "language": "en_GB"},
            "database": {"wc_database_version": "10.3.0", "database_prefix": "wp_"},
            "active_plugins": [dict(p) for p in self.plugins],
            "inactive_plugins": [],
            "dropins_mu_plugins": {"dropins": [], "mu_plugins": []},
            "theme": {"name": "Storefront", "version": "4.6.1"},
            "settings": {"api_enabled": True, "force_ssl": False, "currency": "GBP"},
            "security": {"secure_connection": collection.startswith("https"),
                         "hide_errors": True},
            "pages": [],
            "post_type_counts": [],
        }
        if fields:
            status = {key: value for key, value in status.items()
                      if key in {f.split(".")[0] for f in fields}}
        return Reply(200, status)

    def settings(self, group: str, setting: str | None, collection: str) -> Reply:
        if not self._manager():
            return _error(403, "woocommerce_rest_cannot_view", "Sorry, you cannot list resources.")
        if group != "account":
            return _error(404, "rest_setting_setting_group_invalid", "Invalid setting group.")
        items = []
        for sid, label, kind, default in ACCOUNT_SETTINGS:
            if kind not in REST_TYPES:
                continue  # get_items: is_setting_type_valid
            items.append({"id": sid, "label": label, "description": "", "type": kind,
                          "default": default, "value": self.options.get(sid, default),
                          "_links": {"self": [{"href": f"{collection}/{group}/{sid}"}],
                                     "collection": [{"href": f"{collection}/{group}"}]}})
        if setting is None:
            return Reply(200, items)
        for item in items:
            if item["id"] == setting:
                return Reply(200, item)
        return _error(404, "rest_setting_setting_invalid", "Invalid setting.")

    def wc_admin_options(self, names: list[str]) -> Reply:
        for name in names:
            listed = name in SHOP_MANAGER_OPTIONS
            if not listed and self.environment != "production":
                return _error(403, "woocommerce_rest_cannot_view",
                              "Sorry, you cannot view these options, please remember to update "
                              "the option permissions in Options API to allow viewing these "
                              "options in non-production environments.")
            allowed = self.role == "administrator" or (listed and self._manager())
            if not allowed:
                return _error(403, "woocommerce_rest_cannot_view",
                              "Sorry, you cannot view these options.")
        # get_option: false for an option never saved.
        return Reply(200, {name: self.options.get(name, False) for name in names})


def plugin(path: str, name: str, version: str, author: str, url: str = "") -> dict[str, Any]:
    """One entry of active_plugins, as format_plugin_data gives it."""
    return {"plugin": path, "name": name, "version": version, "version_latest": version,
            "url": url, "author_name": author, "author_url": url, "network_activated": False}


def period(number: int, unit: str) -> dict[str, str]:
    """A relative_date_selector value as WooCommerce stores it (the number as text)."""
    return {"number": str(number), "unit": unit}
