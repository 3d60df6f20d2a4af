//! How values travel through Redis: a versioned envelope around a serde encoding.
//!
//! Envelope layout: `b"of"`, the envelope version (`1`), the codec's id, then the body:
//! the flight's token and the value, encoded by the codec. A payload that does not start
//! with this exact header, names another codec, or whose body does not decode, is
//! rejected, and the waiter treats it as a miss.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The envelope version this crate writes and accepts.
const VERSION: u8 = 1;

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

impl Codec {
    fn id(self) -> u8 {
        match self {
            Codec::Postcard => b'p',
            Codec::Json => b'j',
        }
    }

    /// The envelope for `value`, published under `token`.
    pub(crate) fn seal<V: Serialize>(self, token: &str, value: &V) -> Result<Vec<u8>, String> {
        let mut out = vec![b'o', b'f', VERSION, self.id()];
        let body = (token, value);
        match self {
            Codec::Postcard => postcard::to_io(&body, &mut out)
                .map(drop)
                .map_err(|e| e.to_string())?,
            Codec::Json => serde_json::to_writer(&mut out, &body).map_err(|e| e.to_string())?,
        }
        Ok(out)
    }

    /// The value in `payload`, if it is an envelope of this version and codec, published
    /// under `token`.
    pub(crate) fn open<V: DeserializeOwned>(
        self,
        token: &str,
        payload: &[u8],
    ) -> Result<V, String> {
        let body = match payload {
            [b'o', b'f', VERSION, id, body @ ..] if *id == self.id() => body,
            [b'o', b'f', version, ..] if *version != VERSION => {
                return Err(format!("envelope version {version}, expected {VERSION}"));
            }
            _ => return Err("not an envelope of this codec".to_owned()),
        };
        let (sealed_token, value): (String, V) = match self {
            Codec::Postcard => postcard::from_bytes(body).map_err(|e| e.to_string())?,
            Codec::Json => serde_json::from_slice(body).map_err(|e| e.to_string())?,
        };
        if sealed_token != token {
            return Err("the envelope belongs to another flight".to_owned());
        }
        Ok(value)
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
        old[2] = 0;
        assert!(
            Codec::Postcard
                .open::<u64>("t", &old)
                .unwrap_err()
                .contains("version 0")
        );
        assert!(Codec::Postcard.open::<u64>("t", b"garbage").is_err());
        assert!(
            Codec::Postcard
                .open::<u64>("t", &sealed[..sealed.len() - 1])
                .is_err()
        );
    }

    #[test]
    fn postcard_is_compact() {
        // A u64 and a 12-byte token: header 4 + token 13 + varint value 1.
        assert_eq!(
            Codec::Postcard.seal("123456-abcde", &5u64).unwrap().len(),
            18
        );
    }
}
