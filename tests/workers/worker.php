<?php
/**
 * A minirr / RoadRunner worker in plain PHP (php-cli, no composer): Goridge v3 frames on
 * STDIN (master -> worker) and STDOUT (worker -> master). See docs/external-workers.md.
 *
 * Run by the master as `[server] command = php worker.php`. Never echo or print here:
 * STDOUT is the frame channel, and a stray byte on it breaks the channel. Messages for
 * the log go to STDERR.
 *
 * Routes: /  /echo  /crash  /error  /pid  /env?NAME
 *         /stream?n=N[&delay_ms=M][&marker=PATH][&ignore_stop=1]   N chunks from a Generator,
 *         streamed as RoadRunner's HttpWorker::respond(200, $generator) does (roadrunner-http
 *         3.5): STREAM frames, PING on every fifth, a look for STOP between chunks
 *         (`ignore_stop`: none, a worker that goes on after its client left).
 */

declare(strict_types=1);

const CONTROL = 0x01;
const CODEC_JSON = 0x08;
const ERROR_FLAG = 0x40;
// byte 10 of a frame: the stream byte
const STREAM = 0x01;
const STOP = 0x02;
const PING = 0x04;
const PONG = 0x08;
const PING_EVERY = 5;          // frames: RoadRunner's PHP worker pings on every fifth
const HEADER_SIZE = 12;
const MAX_OPTIONS = 10;

// PHP's own warnings must not land on STDOUT either.
ini_set('display_errors', 'stderr');

/** Exactly $n bytes from $stream, or null at EOF (the master has gone). */
function read_exactly($stream, int $n): ?string
{
    $data = '';
    while (strlen($data) < $n) {
        $chunk = fread($stream, $n - strlen($data));   // a pipe read may return fewer bytes
        if ($chunk === false || $chunk === '') {
            return null;
        }
        $data .= $chunk;
    }
    return $data;
}

/** The next frame as [flags, options, payload, stream byte], or null at EOF. Dies on a broken frame. */
function read_frame($stream): ?array
{
    $header = read_exactly($stream, HEADER_SIZE);
    if ($header === null) {
        return null;
    }
    $h = unpack('Cfirst/Cflags/Vlength/Vcrc/Cstream/Creserved', $header);
    if ($h['crc'] !== crc32(substr($header, 0, 6))) {              // CRC of bytes 0..5 only
        fail('frame header CRC mismatch: ' . bin2hex($header));
    }
    $words = $h['first'] & 0x0F;
    if ($h['first'] >> 4 !== 1 || $words < 3 || $words - 3 > MAX_OPTIONS) {
        fail('bad frame header: ' . bin2hex($header));
    }
    $options = [];
    if ($words > 3) {
        $raw = read_exactly($stream, 4 * ($words - 3));
        if ($raw === null) {
            return null;
        }
        $options = array_values(unpack('V*', $raw));
    }
    $payload = $h['length'] > 0 ? read_exactly($stream, $h['length']) : '';
    if ($payload === null) {
        return null;
    }
    return [$h['flags'], $options, $payload, $h['stream']];
}

/** One whole frame: header (version 1, header length 3 + options), CRC, stream byte, options, payload. */
function encode_frame(int $flags, string $payload, array $options = [], int $stream = 0): string
{
    $head = pack('CCV', 0x10 | (3 + count($options)), $flags, strlen($payload));
    $optionBytes = $options ? pack('V*', ...$options) : '';
    return $head . pack('V', crc32($head)) . pack('CC', $stream, 0) . $optionBytes . $payload;
}

/** Write a frame with one fwrite (the header must never be split); finish a partial write. */
function send_frame(int $flags, string $payload, array $options = [], int $stream = 0): void
{
    $frame = encode_frame($flags, $payload, $options, $stream);
    $written = fwrite(STDOUT, $frame);
    while ($written !== false && $written > 0 && $written < strlen($frame)) {
        $frame = substr($frame, $written);
        $written = fwrite(STDOUT, $frame);
    }
    if ($written === false || $written === 0) {
        exit(1);   // the master has gone
    }
}

function respond(int $status, array $headers, string $body): void
{
    $head = json_encode(['status' => $status, 'headers' => (object) $headers]);
    send_frame(CODEC_JSON, $head . $body, [strlen($head)]);
}

// ---- streamed responses (wire-protocol.md §2.7) --------------------------------------------

final class StreamStopped extends Exception
{
}

/** Without waiting: did the master send STOP (the client left)? Reads what is waiting on
 *  STDIN; the master writes each frame whole, so a waiting frame is read to its end. */
function stop_requested(): bool
{
    $stop = false;
    while (true) {
        $read = [STDIN];
        $write = $except = null;
        if (stream_select($read, $write, $except, 0) < 1) {   // PHP counts its own buffer too
            return $stop;
        }
        $frame = read_frame(STDIN);
        if ($frame === null) {
            exit(0);                                           // the master has gone
        }
        $stop = $stop || ($frame[3] & STOP) !== 0;             // a PONG that comes late is dropped
    }
}

/** After a PING: block until the master's PONG. -> whether a STOP came meanwhile. */
function wait_for_pong(): bool
{
    $stop = false;
    while (true) {
        $frame = read_frame(STDIN);
        if ($frame === null) {
            exit(0);
        }
        if ($frame[3] & PONG) {
            return $stop;
        }
        $stop = $stop || ($frame[3] & STOP) !== 0;
    }
}

/** Send $body's chunks as STREAM frames, each repeating the head (the master keeps the
 *  first one's), a PING on every fifth; between chunks, look for STOP. On STOP: throw
 *  into the generator (its `finally` runs) and answer with an empty final frame. */
function respond_stream(int $status, array $headers, Generator $body, bool $ignoreStop = false): void
{
    $head = json_encode(['status' => $status, 'headers' => (object) $headers]);
    $sent = 0;
    $stopped = false;
    while ($body->valid()) {
        $chunk = (string) $body->current();
        $sent++;
        $ping = $sent % PING_EVERY === 0;
        send_frame(CODEC_JSON, $head . $chunk, [strlen($head)], STREAM | ($ping ? PING : 0));
        $stopped = ($ping && wait_for_pong()) || stop_requested();
        if ($stopped && !$ignoreStop) {
            try {
                $body->throw(new StreamStopped('the client went away'));
            } catch (StreamStopped $e) {
                // the generator did not catch it: it is finished, its `finally` has run
            }
            send_frame(CODEC_JSON, '', [0]);                   // the end; no STREAM
            return;
        }
        $body->next();
    }
    $rest = (string) $body->getReturn();
    send_frame(CODEC_JSON, $head . $rest, [strlen($head)]);   // the last frame: no STREAM
}

/** The chunks of /stream: "chunk i\n", $delayMs apart; $marker (if any) is written when
 *  the generator ends, however it ends. */
function chunks(int $n, int $delayMs, string $marker): Generator
{
    try {
        for ($i = 0; $i < $n; $i++) {
            if ($i > 0 && $delayMs > 0) {
                usleep($delayMs * 1000);
            }
            yield "chunk $i\n";
        }
    } finally {
        if ($marker !== '') {
            file_put_contents($marker, (string) getmypid());
        }
    }
}

function fail(string $message): void
{
    fwrite(STDERR, "worker.php: $message\n");
    exit(1);
}

function is_stop(string $payload): bool
{
    $control = json_decode($payload, true);
    return is_array($control) && ($control['stop'] ?? false) === true;
}

/** Answer one request frame: options[0] is the length of the JSON head, the body follows. */
function handle(array $options, string $payload): void
{
    $headLength = $options[0] ?? strlen($payload);
    $request = json_decode(substr($payload, 0, $headLength), true);
    $body = substr($payload, $headLength);
    $path = parse_url($request['uri'], PHP_URL_PATH);
    $query = $request['rawQuery'];
    $text = ['Content-Type' => ['text/plain']];

    switch ($path) {
        case '/':
            respond(200, $text, 'Hello from PHP');
            return;
        case '/echo':
            respond(200, ['Content-Type' => ['application/octet-stream']], $body);
            return;
        case '/crash':
            fwrite(STDERR, "crashing on purpose\n");
            exit(3);
        case '/error':
            // A soft error: this request failed, the worker carries on. The client gets 500.
            send_frame(ERROR_FLAG, 'something went wrong in PHP');
            return;
        case '/pid':
            respond(200, $text, (string) getmypid());
            return;
        case '/stream':
            parse_str($query, $args);
            $n = (int) ($args['n'] ?? 12);
            $chunks = chunks($n, (int) ($args['delay_ms'] ?? 0), (string) ($args['marker'] ?? ''));
            respond_stream(200, $text, $chunks, ($args['ignore_stop'] ?? '') === '1');
            return;
        case '/env':
            $value = getenv($query);
            respond($value === false ? 404 : 200, $text, $value === false ? "$query is not set" : $value);
            return;
        default:
            respond(404, $text, "no route for $path");
    }
}

// ---- handshake: the master sends {"pid": its pid}; we answer with ours, flags CONTROL only.
$hello = read_frame(STDIN);
if ($hello === null) {
    exit(0);
}
if (!($hello[0] & CONTROL)) {
    fail('expected the handshake control frame first');
}
// (A real application would bootstrap here, before answering: the master counts the worker
// as ready only once the pid arrives.)
send_frame(CONTROL, json_encode(['pid' => getmypid()]));

// ---- the request loop: until {"stop":true} or EOF.
while (true) {
    $frame = read_frame(STDIN);
    if ($frame === null) {
        exit(0);
    }
    [$flags, $options, $payload, $stream] = $frame;
    if ($flags & CONTROL) {
        if (is_stop($payload)) {
            exit(0);
        }
        continue;
    }
    if ($stream !== 0) {
        continue;          // a STOP that crossed the end of its stream: that stream is over
    }
    handle($options, $payload);
}
