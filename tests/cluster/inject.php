<?php
// Injects one message into the cluster as the example deployment's PHP backend does:
// Debian's php-redis (phpredis) and php-msgpack, the envelope packed with msgpack_pack.
//   php inject.php REDIS_URL TOPIC PAYLOAD [QOS [RETAIN [ID]]]
// PAYLOAD prefixed with `hex:` is hex-decoded first (a PHP string: msgpack packs it as str).
// RETAIN is 0 or 1. ID defaults to a fresh uuid v4. Prints the id used.
if ($argc < 4) {
    fwrite(STDERR, "usage: php inject.php REDIS_URL TOPIC PAYLOAD [QOS [RETAIN [ID]]]\n");
    exit(2);
}
foreach (['redis', 'msgpack'] as $ext) {
    if (!extension_loaded($ext)) {
        fwrite(STDERR, "the PHP extension $ext is missing: apt-get install php-cli php-redis php-msgpack\n");
        exit(3);
    }
}
$url = parse_url($argv[1]);
$topic = $argv[2];
$text = $argv[3];
if (strncmp($text, 'hex:', 4) === 0) {
    $text = hex2bin(substr($text, 4));
}
$qos = isset($argv[4]) ? (int) $argv[4] : 1;
$retain = isset($argv[5]) && $argv[5] === '1';
$id = $argv[6] ?? sprintf(
    '%04x%04x-%04x-%04x-%04x-%04x%04x%04x',
    random_int(0, 0xffff), random_int(0, 0xffff), random_int(0, 0xffff),
    random_int(0, 0x0fff) | 0x4000, random_int(0, 0x3fff) | 0x8000,
    random_int(0, 0xffff), random_int(0, 0xffff), random_int(0, 0xffff)
);

$redis = new Redis();
$redis->connect($url['host'] ?? '127.0.0.1', $url['port'] ?? 6379);
$redis->publish($topic, msgpack_pack([
    'id' => $id,
    'msg' => [
        'cmd' => 'publish',
        'retain' => $retain,
        'qos' => $qos,
        'topic' => $topic,
        'payload' => $text,
        'messageId' => 0,
    ],
]));
echo $id, "\n";
