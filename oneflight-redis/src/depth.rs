//! A nesting limit for any serde `Deserializer`.
//!
//! postcard decodes recursively and has no depth limit of its own, so a payload that
//! nests deeply enough (a recursive `V`, written by anything that can write to Redis)
//! would overflow the stack. [`Limited`] wraps a deserializer and counts nesting on the
//! way down: every seq, map, enum, option and newtype entered costs one level, and the
//! payload is rejected once [`MAX_DEPTH`] levels are in use, as serde_json does at 128.

use serde::de::{self, DeserializeSeed, Deserializer, Visitor};
use std::fmt;

/// How deep a value may nest, as serde_json's default.
pub(crate) const MAX_DEPTH: usize = 128;

/// A deserializer that may nest `levels` more levels.
pub(crate) struct Limited<D> {
    pub(crate) inner: D,
    pub(crate) levels: usize,
}

/// The visitor, seq, map and enum accesses of the level below, with the levels left.
struct Below<T> {
    inner: T,
    levels: usize,
}

fn too_deep<E: de::Error>() -> E {
    E::custom(format_args!(
        "the value nests deeper than {MAX_DEPTH} levels"
    ))
}

macro_rules! forward {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            let levels = self.levels.checked_sub(1).ok_or_else(too_deep::<D::Error>)?;
            self.inner.$method($($arg,)* Below { inner: visitor, levels })
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Limited<D> {
    type Error = D::Error;

    forward! {
        deserialize_any(); deserialize_bool(); deserialize_i8(); deserialize_i16();
        deserialize_i32(); deserialize_i64(); deserialize_i128(); deserialize_u8();
        deserialize_u16(); deserialize_u32(); deserialize_u64(); deserialize_u128();
        deserialize_f32(); deserialize_f64(); deserialize_char(); deserialize_str();
        deserialize_string(); deserialize_bytes(); deserialize_byte_buf(); deserialize_option();
        deserialize_unit(); deserialize_seq(); deserialize_map(); deserialize_identifier();
        deserialize_ignored_any();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// A seed whose deserializer is limited to `levels`.
impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Below<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, inner: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(Limited {
            inner,
            levels: self.levels,
        })
    }
}

macro_rules! visit_plain {
    ($($method:ident($ty:ty);)*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Below<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    visit_plain! {
        visit_bool(bool); visit_i8(i8); visit_i16(i16); visit_i32(i32); visit_i64(i64);
        visit_i128(i128); visit_u8(u8); visit_u16(u16); visit_u32(u32); visit_u64(u64);
        visit_u128(u128); visit_f32(f32); visit_f64(f64); visit_char(char); visit_str(&str);
        visit_borrowed_str(&'de str); visit_string(String); visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]); visit_byte_buf(Vec<u8>);
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, inner: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(Limited {
            inner,
            levels: self.levels,
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, inner: D) -> Result<V::Value, D::Error> {
        self.inner.visit_newtype_struct(Limited {
            inner,
            levels: self.levels,
        })
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.inner.visit_seq(Below {
            inner: seq,
            levels: self.levels,
        })
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(Below {
            inner: map,
            levels: self.levels,
        })
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.inner.visit_enum(Below {
            inner: data,
            levels: self.levels,
        })
    }
}

impl<'de, A: de::SeqAccess<'de>> de::SeqAccess<'de> for Below<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        let levels = self.levels;
        self.inner.next_element_seed(Below {
            inner: seed,
            levels,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: de::MapAccess<'de>> de::MapAccess<'de> for Below<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let levels = self.levels;
        self.inner.next_key_seed(Below {
            inner: seed,
            levels,
        })
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        let levels = self.levels;
        self.inner.next_value_seed(Below {
            inner: seed,
            levels,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: de::EnumAccess<'de>> de::EnumAccess<'de> for Below<A> {
    type Error = A::Error;
    type Variant = Below<A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        let levels = self.levels;
        let (value, variant) = self.inner.variant_seed(Below {
            inner: seed,
            levels,
        })?;
        Ok((
            value,
            Below {
                inner: variant,
                levels,
            },
        ))
    }
}

impl<'de, A: de::VariantAccess<'de>> de::VariantAccess<'de> for Below<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        let levels = self.levels;
        self.inner.newtype_variant_seed(Below {
            inner: seed,
            levels,
        })
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        let levels = self
            .levels
            .checked_sub(1)
            .ok_or_else(too_deep::<A::Error>)?;
        self.inner.tuple_variant(
            len,
            Below {
                inner: visitor,
                levels,
            },
        )
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let levels = self
            .levels
            .checked_sub(1)
            .ok_or_else(too_deep::<A::Error>)?;
        self.inner.struct_variant(
            fields,
            Below {
                inner: visitor,
                levels,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Tree {
        Leaf(u32),
        Node(Box<Tree>),
        Pair(Vec<Tree>),
    }

    fn decode(bytes: &[u8]) -> Result<Tree, postcard::Error> {
        let mut inner = postcard::Deserializer::from_bytes(bytes);
        Tree::deserialize(Limited {
            inner: &mut inner,
            levels: MAX_DEPTH,
        })
    }

    #[test]
    fn shallow_values_decode_as_before() {
        let tree = Tree::Pair(vec![Tree::Leaf(1), Tree::Node(Box::new(Tree::Leaf(2)))]);
        let bytes = postcard::to_stdvec(&tree).unwrap();
        assert_eq!(decode(&bytes).unwrap(), tree);
    }

    #[test]
    fn a_payload_nested_past_the_limit_is_an_error_not_a_stack_overflow() {
        // `Node(Node(...(Leaf(0))))` a million levels deep: postcard alone overflows the
        // stack on it (the test thread's 2 MiB stack is gone after a few thousand levels).
        let depth = 1_000_000;
        let mut bytes = vec![1u8; depth]; // variant 1 (`Node`) ...
        bytes.extend([0, 0]); // ... then `Leaf(0)`
        assert!(decode(&bytes).is_err());
    }

    #[test]
    fn the_limit_is_exactly_max_depth() {
        // Each `Node` costs two levels (the enum, then its newtype variant's seed).
        let nest = |levels: usize| {
            let mut bytes = vec![1u8; levels];
            bytes.extend([0, 0]);
            bytes
        };
        assert!(decode(&nest(MAX_DEPTH / 2 - 1)).is_ok());
        assert!(decode(&nest(MAX_DEPTH)).is_err());
    }
}
