//! The Redis names of a flight, and its tokens.
//!
//! A flight of `key` in namespace `ns` is named by its tag
//! `{<bytes in ns>:<ns><bytes in key>:<key>}`: length-prefixed, so that no two
//! (namespace, key) pairs share a tag whatever characters they hold (`"a"` + `"b:c"` and
//! `"a:b"` + `"c"` are `{1:a3:b:c}` and `{3:a:b1:c}`). Its keys share that prefix, so a
//! Redis Cluster keeps them on one slot (the hash tag is never empty: it starts with a
//! digit):
//!
//! - `oneflight:TAG:lease`: the holder's token, with the lease as its TTL;
//! - `oneflight:TAG:value:TOKEN`: the value published by the flight `TOKEN`, kept one
//!   lease plus one poll interval so that polling waiters find it, then gone;
//! - `oneflight:TAG:fence`: the last fencing number handed out for the key, kept for a
//!   day; only keys loaded with `work_fenced` have one (see [`ACQUIRE`](crate::scripts::ACQUIRE));
//! - `oneflight:TAG:void:NONCE`: a nonce whose lease was released, kept one lease, so
//!   that an acquire with it that runs late takes nothing (see [`RELEASE`](crate::scripts::RELEASE));
//! - `oneflight:TAG:cached`: for a [`Cache`](crate::Cache), the key's cached value,
//!   published there by its flights instead of at `value:TOKEN`, kept
//!   `fresh_for + stale_for`.
//!
//! Ends of flights (published or released) are announced on the flight's own channel
//! `oneflight:TAG:done` as `TOKEN TAG_LEN:TAG[ PAYLOAD]`: a hint only, heard by the
//! processes that wait on the key (see [`crate::notify`]).
//!
//! Tokens are `NONCE` or, for a fenced flight, `FENCE-NONCE`, the nonce chosen by the
//! caller before it sends the acquire: if the reply is lost (a timeout, a cancelled
//! caller, a dropped connection), the caller still knows which lease it may have taken,
//! and has it released by nonce ([`RELEASE`](crate::scripts::RELEASE)).

/// The Redis names of one key's flights.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// `{<bytes in ns>:<ns><bytes in key>:<key>}`: injective, see the module docs.
    tag: String,
}

impl Names {
    pub(crate) fn new(namespace: &str, key: &str) -> Self {
        Names {
            tag: format!("{{{}:{namespace}{}:{key}}}", namespace.len(), key.len()),
        }
    }

    pub(crate) fn lease(&self) -> String {
        format!("oneflight:{}:lease", self.tag)
    }
    pub(crate) fn fence(&self) -> String {
        format!("oneflight:{}:fence", self.tag)
    }
    pub(crate) fn value(&self, token: &str) -> String {
        format!("oneflight:{}:value:{token}", self.tag)
    }
    pub(crate) fn void(&self, nonce: &str) -> String {
        format!("oneflight:{}:void:{nonce}", self.tag)
    }
    pub(crate) fn cached(&self) -> String {
        format!("oneflight:{}:cached", self.tag)
    }
    /// Where the flight `token` publishes its value: its own key for a fleet; the one
    /// cached value of the key for a cache (so that `invalidate` removes it for every
    /// flight at once).
    pub(crate) fn published(&self, token: &str, cache: bool) -> String {
        if cache {
            self.cached()
        } else {
            self.value(token)
        }
    }
    /// The channel on which the ends of the key's flights are announced.
    pub(crate) fn channel(&self) -> String {
        channel_of(&self.tag)
    }
    /// The flight's tag, as announcements name it.
    pub(crate) fn tag(&self) -> &str {
        &self.tag
    }
    /// `TAG_LEN:TAG`, as announcements carry it.
    pub(crate) fn announced(&self) -> String {
        format!("{}:{}", self.tag.len(), self.tag)
    }
}

/// The channel of the flights whose tag is `tag` (see [`Names::channel`]).
pub(crate) fn channel_of(tag: &str) -> String {
    format!("oneflight:{tag}:done")
}

/// Splits an announcement `TOKEN TAG_LEN:TAG[ PAYLOAD]`; `None` when malformed.
pub(crate) fn parse_announcement(message: &[u8]) -> Option<(&str, &str, Option<&[u8]>)> {
    let space = message.iter().position(|&b| b == b' ')?;
    let token = std::str::from_utf8(&message[..space]).ok()?;
    let rest = &message[space + 1..];
    let colon = rest.iter().position(|&b| b == b':')?;
    let len: usize = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
    let rest = &rest[colon + 1..];
    let tag = std::str::from_utf8(rest.get(..len)?).ok()?;
    let payload = match &rest[len..] {
        [] => None,
        [b' ', payload @ ..] => Some(payload),
        _ => return None,
    };
    Some((token, tag, payload))
}

/// The fencing number of a fenced flight's token (`FENCE-NONCE`); `None` for an unfenced
/// flight's token (`NONCE`, no dash).
pub(crate) fn fence_of(token: &str) -> Option<u64> {
    let (fence, _) = token.split_once('-')?;
    fence.parse().ok()
}

/// The nonce of a token: what [`RELEASE`](crate::scripts::RELEASE) matches.
pub(crate) fn nonce_of(token: &str) -> &str {
    token.rsplit_once('-').map_or(token, |(_, nonce)| nonce)
}

/// A fresh nonce for a flight's token, from the standard library's randomly keyed hasher
/// (no extra dependency): tokens must differ between processes and flights, not be
/// secret.
pub(crate) fn nonce() -> String {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let random =
        RandomState::new().hash_one((COUNTER.fetch_add(1, Ordering::Relaxed), std::process::id()));
    format!("{random:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_never_mix_namespaces_and_keys() {
        let odd = [
            "", "a", "a:b", "b:c", "c", ":", "{", "}", "{}", "a b", "a\nb", "1:a", "é",
        ];
        let mut seen = std::collections::HashMap::new();
        for namespace in odd {
            for key in odd {
                let lease = Names::new(namespace, key).lease();
                if let Some(other) = seen.insert(lease.clone(), (namespace, key)) {
                    panic!("{other:?} and {:?} share {lease}", (namespace, key));
                }
            }
        }
        assert_ne!(
            Names::new("a", "b:c").lease(),
            Names::new("a:b", "c").lease()
        );
        assert_ne!(
            Names::new("a", "b:c").channel(),
            Names::new("a:b", "c").channel()
        );
    }

    #[test]
    fn announcements_parse_back() {
        let names = Names::new("ns", "k e}y\n");
        let mut message = format!("123-abc {}", names.announced()).into_bytes();
        assert_eq!(
            parse_announcement(&message),
            Some(("123-abc", names.tag(), None))
        );
        message.extend(b" \x00payload");
        assert_eq!(
            parse_announcement(&message),
            Some(("123-abc", names.tag(), Some(&b"\x00payload"[..])))
        );
        assert_eq!(parse_announcement(b"token 99:short"), None);
    }

    #[test]
    fn nonces_and_fences_come_back_out_of_tokens() {
        assert_eq!(nonce_of("12-abc"), "abc");
        assert_eq!(nonce_of("abc"), "abc");
        assert_eq!(fence_of("12-abc"), Some(12));
        assert_eq!(fence_of("abc"), None);
    }
}
