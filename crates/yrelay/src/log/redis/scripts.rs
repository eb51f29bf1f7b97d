//! The Lua scripts the log runs (each atomic; its keys share a slot).

use redis::Cmd;

/// Adds an entry to `KEYS[1]` (`XADD` arguments in `ARGV`) and returns its id
/// with the document's followers (`KEYS[2]`, field/value pairs).
pub(super) const APPEND: &str =
    "return {redis.call('XADD', KEYS[1], unpack(ARGV)), redis.call('HGETALL', KEYS[2])}";
/// Registers an inbox (`ARGV[1]`, token `ARGV[2]`) as a follower of a
/// document (`KEYS[1]`) and returns the ids of the newest entries of its
/// update and awareness streams (`KEYS[2]`, `KEYS[3]`; when the update
/// stream is empty, how far it was trimmed (`KEYS[4]`); else `0-0`).
pub(super) const REGISTER: &str = "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
    local function last(stream, floor)
        local newest = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
        return newest and newest[1] or floor or '0-0'
    end
    return {last(KEYS[2], redis.call('GET', KEYS[4])), last(KEYS[3], false)}";
/// Deletes a registration if it is still the given one.
pub(super) const FORGET: &str = "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0";

/// Trims the update stream `KEYS[1]` below `ARGV[2]` and records in
/// `KEYS[2]` how far it was trimmed (`ARGV[1]`), never lowering it.
pub(super) const TRIM: &str = "redis.call('XTRIM', KEYS[1], 'MINID', ARGV[2])
    local c = redis.call('GET', KEYS[2])
    if not c then redis.call('SET', KEYS[2], ARGV[1]) return 1 end
    local cm, cs = string.match(c, '(%d+)-(%d+)')
    local nm, ns = string.match(ARGV[1], '(%d+)-(%d+)')
    if tonumber(nm) > tonumber(cm) or (tonumber(nm) == tonumber(cm) and tonumber(ns) > tonumber(cs)) then
    redis.call('SET', KEYS[2], ARGV[1]) end
    return 1";

/// Takes the document `ARGV[1]` off the backlog (`KEYS[1]`) and the
/// documents being cleared (`KEYS[2]`).
pub(super) const UNLIST: &str =
    "redis.call('ZREM', KEYS[1], ARGV[1]) return redis.call('ZREM', KEYS[2], ARGV[1])";

/// The first `ARGV[1]` + 1 members of the backlog (`KEYS[1]`) and of the
/// documents being cleared (`KEYS[2]`), with their scores.
pub(super) const BACKLOG: &str = "local a = redis.call('ZRANGE', KEYS[1], 0, ARGV[1], 'WITHSCORES')
    local b = redis.call('ZRANGE', KEYS[2], 0, ARGV[1], 'WITHSCORES')
    for i = 1, #b do a[#a + 1] = b[i] end
    return a";

/// Moves the document `ARGV[1]` from the backlog (`KEYS[1]`) to the
/// documents being cleared (`KEYS[2]`), keeping its score.
pub(super) const CLAIM: &str = "local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
    if s then redis.call('ZREM', KEYS[1], ARGV[1]) redis.call('ZADD', KEYS[2], s, ARGV[1]) end
    return 1";

/// Takes the document `ARGV[1]` off the documents being cleared
/// (`KEYS[2]`), and back onto the backlog (`KEYS[1]`, its old score or
/// `ARGV[3]`) when `ARGV[2]` is `1` (its log holds more than the store).
pub(super) const SETTLE: &str = "local s = redis.call('ZSCORE', KEYS[2], ARGV[1])
    redis.call('ZREM', KEYS[2], ARGV[1])
    if ARGV[2] == '1' then redis.call('ZADD', KEYS[1], 'NX', s or ARGV[3], ARGV[1]) end
    return 1";

/// Takes or renews the lease `KEYS[1]` for holder `ARGV[1]` for `ARGV[2]`
/// ms; 1 when taken.
pub(super) const TAKE_LEASE: &str = "local h = redis.call('GET', KEYS[1])
    if h == ARGV[1] or not h then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
    return 0";

/// Deletes the lease `KEYS[1]` if holder `ARGV[1]` holds it.
pub(super) const RELEASE_LEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// `EVAL script` with its keys; the caller adds the arguments. (Keys first:
/// a cluster routes the script by them, and they must share a slot.)
pub(super) fn eval(script: &str, keys: &[&str]) -> Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(keys.len()).arg(keys);
    cmd
}
