//! How values travel through Redis: a versioned envelope around a serde encoding.
//!
//! Envelope layout: `b"of"`, the envelope version (`2`), the codec's id, the value type's
//! fingerprint (8 bytes, little-endian: FNV-1a of `std::any::type_name::<V>()`), then the
//! body: the flight's token and the value, encoded by the codec. A payload that does not
//! start with this exact header (another version, codec or type), or whose body does not
//! decode, or that nests deeper than 128 levels, is rejected, and the waiter treats it as
//! a miss: a value sealed for another type is never returned as this one.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::depth::{Limited, MAX_DEPTH};

/// The envelope version this crate writes and accepts.
const VERSION: u8 = 2;

/// The header's length: magic, version, codec, fingerprint.
const HEADER: usize = 4 + 8;

/// How values are encoded in Redis. Every process of a fleet must use the same codec.
///
/// ```
/// use oneflight_redis::{Codec, Fleet, redis};
///
/// let client = redis::Client::open("redis://127.0.0.1/").unwrap();
/// let fleet: Fleet<String> = Fleet::builder(client, "app").codec(Codec::Json).build();
/// # drop(fleet);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Codec {
    /// [postcard](https://docs.rs/postcard): compact (varint integers, no field names) and
    /// fast, with a stable wire format (1.x). The default.
    #[default]
    Postcard,
    /// JSON through `serde_json`: larger and slower, but readable with `redis-cli` when
    /// debugging.
    Json,
}

/// The fingerprint of `V`'s type name. Two builds that name the type alike agree; a
/// renamed or different type is a miss, never a wrong value. (Type names are not
/// guaranteed stable across compiler versions: at worst, a miss after an upgrade.)
fn fingerprint<V>() -> [u8; 8] {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in std::any::type_name::<V>().bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash.to_le_bytes()
}

impl Codec {
    fn id(self) -> u8 {
        match self {
            Codec::Postcard => b'p',
            Codec::Json => b'j',
        }
    }

    fn header<V>(self) -> [u8; HEADER] {
        let mut header = [b'o', b'f', VERSION, self.id(), 0, 0, 0, 0, 0, 0, 0, 0];
        header[4..].copy_from_slice(&fingerprint::<V>());
        header
    }

    /// The envelope for `value`, published under `token`.
    pub(crate) fn seal<V: Serialize>(self, token: &str, value: &V) -> Result<Vec<u8>, String> {
        let mut out = self.header::<V>().to_vec();
        let body = (token, value);
        match self {
            Codec::Postcard => postcard::to_io(&body, &mut out)
                .map(drop)
                .map_err(|e| e.to_string())?,
            Codec::Json => serde_json::to_writer(&mut out, &body).map_err(|e| e.to_string())?,
        }
        Ok(out)
    }

    /// The value in `payload`, if it is an envelope of this version, codec and type,
    /// published under `token`.
    pub(crate) fn open<V: DeserializeOwned>(
        self,
        token: &str,
        payload: &[u8],
    ) -> Result<V, String> {
        let (sealed_token, value) = self.open_any::<V>(payload)?;
        if sealed_token != token {
            return Err("the envelope belongs to another flight".to_owned());
        }
        Ok(value)
    }

    /// The token and value in `payload`, if it is an envelope of this version, codec and
    /// type, whichever flight published it: for a cache's value, which any flight of the
    /// key may have stored.
    pub(crate) fn open_any<V: DeserializeOwned>(
        self,
        payload: &[u8],
    ) -> Result<(String, V), String> {
        let body = match payload.split_at_checked(HEADER) {
            Some((header, body)) if header == self.header::<V>() => body,
            _ => match payload {
                [b'o', b'f', version, ..] if *version != VERSION => {
                    return Err(format!("envelope version {version}, expected {VERSION}"));
                }
                [b'o', b'f', _, id, ..] if *id != self.id() => {
                    return Err("an envelope of another codec".to_owned());
                }
                [b'o', b'f', ..] if payload.len() >= HEADER => {
                    return Err("an envelope of another value type".to_owned());
                }
                _ => return Err("not an envelope".to_owned()),
            },
        };
        Ok(match self {
            Codec::Postcard => {
                let mut inner = postcard::Deserializer::from_bytes(body);
                let limited = Limited {
                    inner: &mut inner,
                    levels: MAX_DEPTH,
                };
                serde::Deserialize::deserialize(limited).map_err(|e| e.to_string())?
            }
            // serde_json limits nesting to 128 levels by itself.
            Codec::Json => serde_json::from_slice(body).map_err(|e| e.to_string())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_in_each_codec() {
        for codec in [Codec::Postcard, Codec::Json] {
            let sealed = codec.seal("7-abc", &vec![1u32, 2, 3]).unwrap();
            assert_eq!(
                codec.open::<Vec<u32>>("7-abc", &sealed).unwrap(),
                vec![1, 2, 3]
            );
            assert!(
                codec.open::<Vec<u32>>("8-abc", &sealed).is_err(),
                "another flight's token"
            );
        }
    }

    #[test]
    fn garbage_other_versions_and_other_codecs_are_rejected() {
        let sealed = Codec::Postcard.seal("t", &5u64).unwrap();
        assert!(Codec::Json.open::<u64>("t", &sealed).is_err());
        let mut old = sealed.clone();
        old[2] = 1;
        assert!(
            Codec::Postcard
                .open::<u64>("t", &old)
                .unwrap_err()
                .contains("version 1")
        );
        assert!(Codec::Postcard.open::<u64>("t", b"garbage").is_err());
        assert!(
            Codec::Postcard
                .open::<u64>("t", &sealed[..sealed.len() - 1])
                .is_err()
        );
    }

    #[test]
    fn a_value_sealed_for_another_type_is_rejected_even_when_its_bytes_would_decode() {
        // A u32 and a u64 share postcard's varint encoding: only the fingerprint tells.
        for codec in [Codec::Postcard, Codec::Json] {
            let sealed = codec.seal("t", &5u32).unwrap();
            assert_eq!(codec.open::<u32>("t", &sealed).unwrap(), 5);
            let error = codec.open::<u64>("t", &sealed).unwrap_err();
            assert!(error.contains("another value type"), "{error}");
        }
    }

    #[test]
    fn postcard_is_compact() {
        // A u64 and a 12-byte token: header 12 + token 13 + varint value 1.
        assert_eq!(
            Codec::Postcard.seal("123456-abcde", &5u64).unwrap().len(),
            26
        );
    }
}
