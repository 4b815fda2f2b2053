//! JSON with every object's keys in alphabetical order, written straight
//! from the typed value.
//!
//! The wire form of the status objects has always been
//! `serde_json::to_value(x).to_string()`: a `Value` tree, whose maps sort
//! their keys, then its text. A riklet sends every pod's status with each
//! heartbeat, so at 500 pods that tree (a few hundred allocations per pod)
//! was built and dropped 500 times every 5 s. This serializer writes the
//! same bytes without the tree: scalars and arrays go straight to the
//! output; an object's entries are written one after the other, then put
//! in key order in place.
//!
//! Scalars are written by `serde_json` itself (numbers, escapes, `null`
//! for a non-finite float, as `Value` has it). Map keys become strings as
//! in a `Value` (numbers and booleans as their text; anything else is
//! refused); of duplicate keys (a flattened field named like another) the
//! last wins, like in a `Value` map.

use std::borrow::Cow;
use std::ops::Range;

use serde::ser::{self, Error as _, Impossible, Serialize};

type Error = serde_json::Error;
type Result<T = ()> = std::result::Result<T, Error>;

/// `value` as JSON text, keys in alphabetical order.
pub(super) fn to_string<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    let mut writer = Writer {
        out: Vec::with_capacity(1024),
        entries: Vec::new(),
        values: Vec::new(),
    };
    value.serialize(&mut writer)?;
    String::from_utf8(writer.out).map_err(Error::custom)
}

struct Writer {
    out: Vec<u8>,
    /// The entries of the objects being written, innermost last: each
    /// one's key, and where its value was written in `out`.
    entries: Vec<(Cow<'static, str>, Range<usize>)>,
    /// Where an object's values are moved while they are put in order.
    values: Vec<u8>,
}

impl Writer {
    /// A scalar, as `serde_json` writes it.
    fn scalar<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        serde_json::to_writer(&mut self.out, value)
    }

    /// An object; `closing` is written after its closing brace.
    fn object(&mut self, closing: &'static [u8]) -> Object<'_> {
        Object {
            start: self.out.len(),
            first_entry: self.entries.len(),
            writer: self,
            key: None,
            closing,
        }
    }
}

/// An object being written: its values are written from `start` on, its
/// entries are the writer's from `first_entry` on.
struct Object<'a> {
    writer: &'a mut Writer,
    start: usize,
    first_entry: usize,
    /// The key of a map entry whose value comes next.
    key: Option<String>,
    /// Closes a struct variant's outer object too.
    closing: &'static [u8],
}

impl Object<'_> {
    fn entry<T: Serialize + ?Sized>(&mut self, key: Cow<'static, str>, value: &T) -> Result {
        let at = self.writer.out.len();
        value.serialize(&mut *self.writer)?;
        let written = at..self.writer.out.len();
        self.writer.entries.push((key, written));
        Ok(())
    }

    /// Replaces the values written since `start` by the object, keys in
    /// order.
    fn end(self) -> Result {
        let writer = self.writer;
        let mut values = std::mem::take(&mut writer.values);
        values.clear();
        values.extend_from_slice(&writer.out[self.start..]);
        writer.out.truncate(self.start);
        let entries = &mut writer.entries[self.first_entry..];
        // Stable: of equal keys the last written stays last, and wins.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let out = &mut writer.out;
        out.push(b'{');
        let mut first = true;
        for (i, (key, range)) in entries.iter().enumerate() {
            if entries.get(i + 1).is_some_and(|next| next.0 == *key) {
                continue;
            }
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            serde_json::to_writer(&mut *out, key.as_ref())?;
            out.push(b':');
            out.extend_from_slice(&values[range.start - self.start..range.end - self.start]);
        }
        out.push(b'}');
        out.extend_from_slice(self.closing);
        writer.entries.truncate(self.first_entry);
        writer.values = values;
        Ok(())
    }
}

/// An array being written: elements go straight to the output.
struct Array<'a> {
    writer: &'a mut Writer,
    first: bool,
    /// Closes a newtype variant's object too.
    closing: &'static [u8],
}

impl Array<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        if !std::mem::take(&mut self.first) {
            self.writer.out.push(b',');
        }
        value.serialize(&mut *self.writer)
    }

    fn end(self) -> Result {
        self.writer.out.push(b']');
        self.writer.out.extend_from_slice(self.closing);
        Ok(())
    }
}

macro_rules! scalars {
    ($($method:ident: $ty:ty),* $(,)?) => {
        $(fn $method(self, v: $ty) -> Result {
            self.scalar(&v)
        })*
    };
}

impl<'a> ser::Serializer for &'a mut Writer {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Array<'a>;
    type SerializeTuple = Array<'a>;
    type SerializeTupleStruct = Array<'a>;
    type SerializeTupleVariant = Array<'a>;
    type SerializeMap = Object<'a>;
    type SerializeStruct = Object<'a>;
    type SerializeStructVariant = Object<'a>;

    scalars!(
        serialize_bool: bool, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32,
        serialize_i64: i64, serialize_i128: i128, serialize_u8: u8, serialize_u16: u16,
        serialize_u32: u32, serialize_u64: u64, serialize_u128: u128, serialize_f64: f64,
        serialize_char: char,
    );

    /// As the `f64` a `Value` would hold.
    fn serialize_f32(self, v: f32) -> Result {
        self.scalar(&f64::from(v))
    }

    fn serialize_str(self, v: &str) -> Result {
        self.scalar(v)
    }

    fn serialize_bytes(self, v: &[u8]) -> Result {
        self.scalar(v)
    }

    fn serialize_none(self) -> Result {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result {
        self.serialize_none()
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result {
        self.serialize_none()
    }

    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result {
        self.scalar(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, v: &T) -> Result {
        v.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result {
        let mut object = self.object(b"");
        object.entry(Cow::Borrowed(variant), value)?;
        object.end()
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Array<'a>> {
        self.out.push(b'[');
        Ok(Array {
            writer: self,
            first: true,
            closing: b"",
        })
    }

    fn serialize_tuple(self, len: usize) -> Result<Array<'a>> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Array<'a>> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Array<'a>> {
        self.out.push(b'{');
        self.scalar(variant)?;
        self.out.extend_from_slice(b":[");
        Ok(Array {
            writer: self,
            first: true,
            closing: b"}",
        })
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Object<'a>> {
        Ok(self.object(b""))
    }

    fn serialize_struct(self, _: &'static str, _len: usize) -> Result<Object<'a>> {
        Ok(self.object(b""))
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Object<'a>> {
        // `{"variant":{…}}`: the outer object has one key, so only the
        // inner one needs ordering; its end closes both.
        self.out.push(b'{');
        self.scalar(variant)?;
        self.out.push(b':');
        Ok(self.object(b"}"))
    }
}

impl ser::SerializeSeq for Array<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        self.element(value)
    }
    fn end(self) -> Result {
        Array::end(self)
    }
}

impl ser::SerializeTuple for Array<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        self.element(value)
    }
    fn end(self) -> Result {
        Array::end(self)
    }
}

impl ser::SerializeTupleStruct for Array<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        self.element(value)
    }
    fn end(self) -> Result {
        Array::end(self)
    }
}

impl ser::SerializeTupleVariant for Array<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        self.element(value)
    }
    fn end(self) -> Result {
        Array::end(self)
    }
}

impl ser::SerializeMap for Object<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result {
        self.key = Some(key.serialize(KeySerializer)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        let key = self
            .key
            .take()
            .ok_or_else(|| Error::custom("a map value without its key"))?;
        self.entry(Cow::Owned(key), value)
    }
    fn end(self) -> Result {
        Object::end(self)
    }
}

impl ser::SerializeStruct for Object<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result {
        self.entry(Cow::Borrowed(key), value)
    }
    fn end(self) -> Result {
        Object::end(self)
    }
}

impl ser::SerializeStructVariant for Object<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result {
        self.entry(Cow::Borrowed(key), value)
    }
    fn end(self) -> Result {
        Object::end(self)
    }
}

/// A map key, as the string `serde_json::to_value` makes of it.
struct KeySerializer;

fn key_must_be_a_string() -> Error {
    Error::custom("key must be a string")
}

macro_rules! text_keys {
    ($($method:ident: $ty:ty),* $(,)?) => {
        $(fn $method(self, v: $ty) -> Result<String> {
            Ok(v.to_string())
        })*
    };
}

/// A float key as `Value` writes it; only finite ones are keys.
fn float_key(v: f64) -> Result<String> {
    if v.is_finite() {
        serde_json::to_string(&v)
    } else {
        Err(Error::custom("float key must be finite"))
    }
}

impl ser::Serializer for KeySerializer {
    type Ok = String;
    type Error = Error;
    type SerializeSeq = Impossible<String, Error>;
    type SerializeTuple = Impossible<String, Error>;
    type SerializeTupleStruct = Impossible<String, Error>;
    type SerializeTupleVariant = Impossible<String, Error>;
    type SerializeMap = Impossible<String, Error>;
    type SerializeStruct = Impossible<String, Error>;
    type SerializeStructVariant = Impossible<String, Error>;

    fn serialize_str(self, v: &str) -> Result<String> {
        Ok(v.to_string())
    }

    fn serialize_char(self, v: char) -> Result<String> {
        Ok(v.to_string())
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<String> {
        Ok(variant.to_string())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<String> {
        v.serialize(self)
    }

    text_keys!(
        serialize_bool: bool, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32,
        serialize_i64: i64, serialize_i128: i128, serialize_u8: u8, serialize_u16: u16,
        serialize_u32: u32, serialize_u64: u64, serialize_u128: u128,
    );

    fn serialize_f32(self, v: f32) -> Result<String> {
        float_key(f64::from(v))
    }

    fn serialize_f64(self, v: f64) -> Result<String> {
        float_key(v)
    }

    fn serialize_bytes(self, _: &[u8]) -> Result<String> {
        Err(key_must_be_a_string())
    }

    fn serialize_none(self) -> Result<String> {
        Err(key_must_be_a_string())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<String> {
        Err(key_must_be_a_string())
    }
    fn serialize_unit(self) -> Result<String> {
        Err(key_must_be_a_string())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<String> {
        Err(key_must_be_a_string())
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<String> {
        Err(key_must_be_a_string())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant> {
        Err(key_must_be_a_string())
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap> {
        Err(key_must_be_a_string())
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct> {
        Err(key_must_be_a_string())
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant> {
        Err(key_must_be_a_string())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use serde::Serialize;

    use super::*;

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Inner {
        zeta: Option<f64>,
        alpha: Vec<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<u8>,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Flat {
        middle: &'static str,
        after: bool,
    }

    #[derive(Serialize)]
    enum Shape {
        Unit,
        Newtype(u8),
        Tuple(u8, i64),
        Struct { y: u8, x: f32 },
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Outer {
        zulu: Inner,
        #[serde(flatten)]
        flat: Flat,
        by_name: HashMap<String, Inner>,
        sorted: BTreeMap<String, u64>,
        escaped: String,
        shapes: Vec<Shape>,
        floats: [f64; 4],
        unit: (),
        tuple: (u8, &'static str),
    }

    fn outer() -> Outer {
        let inner = |z| Inner {
            zeta: z,
            alpha: vec![3, 1],
            skipped: None,
        };
        Outer {
            zulu: inner(Some(1e-6)),
            flat: Flat {
                middle: "m",
                after: true,
            },
            by_name: HashMap::from([
                ("b".to_string(), inner(None)),
                ("a".to_string(), inner(Some(2.0))),
                ("é".to_string(), inner(Some(-0.5))),
            ]),
            sorted: BTreeMap::from([("k".to_string(), u64::MAX)]),
            escaped: "quote \" back \\ line \n tab \t ctrl \u{1}".to_string(),
            shapes: vec![
                Shape::Unit,
                Shape::Newtype(7),
                Shape::Tuple(1, -2),
                Shape::Struct { y: 1, x: 0.1 },
            ],
            floats: [f64::NAN, f64::INFINITY, 1.5e300, 0.0],
            unit: (),
            tuple: (9, "nine"),
        }
    }

    #[test]
    fn writes_the_bytes_of_a_value_tree() {
        let want = serde_json::to_value(outer()).unwrap().to_string();
        assert_eq!(to_string(&outer()).unwrap(), want);
        assert!(want.starts_with(r#"{"after":true,"byName":{"a":{"alpha":[3,1],"zeta":2.0}"#));
    }

    #[test]
    fn the_last_of_duplicate_keys_wins_like_in_a_value_map() {
        #[derive(Serialize)]
        struct Twice {
            a: u8,
            #[serde(flatten)]
            again: BTreeMap<&'static str, u8>,
        }
        let twice = Twice {
            a: 1,
            again: BTreeMap::from([("a", 2), ("b", 3)]),
        };
        let want = serde_json::to_value(&twice).unwrap().to_string();
        assert_eq!(want, r#"{"a":2,"b":3}"#);
        assert_eq!(to_string(&twice).unwrap(), want);
    }

    #[test]
    fn keys_become_strings_as_in_a_value() {
        let numbered = BTreeMap::from([(10u8, "ten"), (9, "nine")]);
        let want = serde_json::to_value(&numbered).unwrap().to_string();
        assert_eq!(want, r#"{"10":"ten","9":"nine"}"#);
        assert_eq!(to_string(&numbered).unwrap(), want);
        let flags = BTreeMap::from([(true, 1), (false, 0)]);
        let want = serde_json::to_value(&flags).unwrap().to_string();
        assert_eq!(to_string(&flags).unwrap(), want);
        let pairs = BTreeMap::from([((1, 2), "pair")]);
        assert!(serde_json::to_value(&pairs).is_err());
        assert!(to_string(&pairs).is_err());
    }
}
