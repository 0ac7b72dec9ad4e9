<?php
// Roundcube's own vpopmaild password driver (Debian roundcube-plugins), run without Roundcube:
// this stands in for the rcmail object that hands the driver its configuration.
//   php roundcube_vpopmaild.php DRIVER HOST PORT USER CURRENT_PASSWORD NEW_PASSWORD
// prints the driver's answer: 0 PASSWORD_SUCCESS, 2 PASSWORD_ERROR, 3 PASSWORD_CONNECT_ERROR.
// The constants are those of plugins/password/password.php.
define('PASSWORD_CRYPT_ERROR', 1);
define('PASSWORD_ERROR', 2);
define('PASSWORD_CONNECT_ERROR', 3);
define('PASSWORD_SUCCESS', 0);

require_once 'Net/Socket.php';

class harness_config
{
    private $values;

    function __construct($values)
    {
        $this->values = $values;
    }

    function get($name, $default = null)
    {
        return array_key_exists($name, $this->values) ? $this->values[$name] : $default;
    }
}

class rcmail
{
    public $config;
    private static $instance;

    static function get_instance()
    {
        if (!self::$instance) {
            self::$instance = new rcmail();
        }
        return self::$instance;
    }
}

list(, $driver, $host, $port, $user, $current, $new) = $argv;
rcmail::get_instance()->config = new harness_config([
    'password_vpopmaild_host' => $host,
    'password_vpopmaild_port' => (int) $port,
    'password_vpopmaild_timeout' => 10,
]);
require $driver;
$password = new rcube_vpopmaild_password();
echo $password->save($current, $new, $user), "\n";
