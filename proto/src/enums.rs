//! Enum names: how a closed set of the contract reads in JSON and in logs.
//!
//! prost keeps an enum field as an `i32` (so a value from a newer peer survives a
//! round trip); serde would print that number. The build gives every enum a
//! [`WireEnum`] impl listing its values' names (the protobuf name without the
//! enum's prefix, lower case: `FILE_ACCESS_READ_WRITE` is `"read_write"`) and every
//! enum field the serde functions below, so JSON lines stay readable and equal to
//! the strings the contract used before it had enums.

use serde::de::{self, Deserializer, Visitor};
use serde::ser::{SerializeSeq, Serializer};

/// A protobuf enum with the names it has in JSON.
pub trait WireEnum: Copy + TryFrom<i32> + Into<i32> + 'static {
    /// (number, name) of every value, in declaration order.
    const NAMES: &'static [(i32, &'static str)];

    /// The name of this value (`"read_write"`).
    fn name(self) -> &'static str {
        let n: i32 = self.into();
        name_of::<Self>(n).unwrap_or("unknown")
    }

    /// The value with this name; None for a name the contract does not have.
    fn from_name(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .and_then(|(v, _)| Self::try_from(*v).ok())
    }

    /// The value of this number; None for a number this build does not know (a
    /// newer peer's, or garbage).
    fn known(n: i32) -> Option<Self> {
        Self::try_from(n).ok()
    }
}

/// The name of `n` as a value of `E`, if `E` has it.
pub fn name_of<E: WireEnum>(n: i32) -> Option<&'static str> {
    E::NAMES
        .iter()
        .find(|(v, _)| *v == n)
        .map(|(_, name)| *name)
}

/// The number of `s` as a value of `E`: its name, "" (the zero value) or a number.
fn parse<E: WireEnum>(s: &str) -> Option<i32> {
    if s.is_empty() {
        return Some(0);
    }
    E::NAMES
        .iter()
        .find(|(_, n)| *n == s)
        .map(|(v, _)| *v)
        .or_else(|| s.parse().ok())
}

fn expected<E: WireEnum>() -> String {
    let names: Vec<&str> = E::NAMES.iter().map(|(_, n)| *n).collect();
    format!("one of {}", names.join(", "))
}

struct One<E>(std::marker::PhantomData<E>);

impl<E: WireEnum> Visitor<'_> for One<E> {
    type Value = i32;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&expected::<E>())
    }

    fn visit_str<Er: de::Error>(self, s: &str) -> Result<i32, Er> {
        parse::<E>(s).ok_or_else(|| Er::invalid_value(de::Unexpected::Str(s), &self))
    }

    fn visit_i64<Er: de::Error>(self, v: i64) -> Result<i32, Er> {
        i32::try_from(v).map_err(|_| Er::invalid_value(de::Unexpected::Signed(v), &self))
    }

    fn visit_u64<Er: de::Error>(self, v: u64) -> Result<i32, Er> {
        i32::try_from(v).map_err(|_| Er::invalid_value(de::Unexpected::Unsigned(v), &self))
    }

    fn visit_unit<Er: de::Error>(self) -> Result<i32, Er> {
        Ok(0)
    }
}

/// serde functions for a singular enum field.
pub mod one {
    use super::*;

    pub fn serialize<E: WireEnum, S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
        match name_of::<E>(*v) {
            Some(n) => s.serialize_str(n),
            None => s.serialize_i32(*v),
        }
    }

    pub fn deserialize<'de, E: WireEnum, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
        d.deserialize_any(One::<E>(std::marker::PhantomData))
    }
}

/// serde functions for a repeated enum field.
pub mod repeated {
    use super::*;

    struct Name<E>(i32, std::marker::PhantomData<E>);

    impl<E: WireEnum> serde::Serialize for Name<E> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            one::serialize::<E, S>(&self.0, s)
        }
    }

    struct Number<E>(i32, std::marker::PhantomData<E>);

    impl<'de, E: WireEnum> serde::Deserialize<'de> for Number<E> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            Ok(Number(
                one::deserialize::<E, D>(d)?,
                std::marker::PhantomData,
            ))
        }
    }

    pub fn serialize<E: WireEnum, S: Serializer>(v: &[i32], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for n in v {
            seq.serialize_element(&Name::<E>(*n, std::marker::PhantomData))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, E: WireEnum, D: Deserializer<'de>>(d: D) -> Result<Vec<i32>, D::Error> {
        let v: Vec<Number<E>> = serde::Deserialize::deserialize(d)?;
        Ok(v.into_iter().map(|n| n.0).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensor::v1::{
        CommandResult, CommandStatus, EnforcementAction, FileAccess, FileOpen, PathMatch,
    };

    #[test]
    fn names_are_the_value_names_without_the_prefix() {
        assert_eq!(FileAccess::ReadWrite.name(), "read_write");
        assert_eq!(FileAccess::Unspecified.name(), "unspecified");
        assert_eq!(CommandStatus::Unsupported.name(), "unsupported");
        assert_eq!(
            EnforcementAction::from_name("quarantine"),
            Some(EnforcementAction::Quarantine)
        );
        assert_eq!(PathMatch::from_name("Dir"), None);
        assert_eq!(FileAccess::known(99), None);
    }

    #[test]
    fn json_renders_names_and_reads_names_numbers_and_empty() {
        let f = FileOpen {
            path: "/etc/hosts".into(),
            access: FileAccess::Write.into(),
            ..Default::default()
        };
        let j = serde_json::to_value(&f).unwrap();
        assert_eq!(j["access"], "write");
        let back: FileOpen = serde_json::from_value(j).unwrap();
        assert_eq!(back, f);
        let r: CommandResult = serde_json::from_str(r#"{"status":"partial"}"#).unwrap();
        assert_eq!(r.status(), CommandStatus::Partial);
        let r: CommandResult = serde_json::from_str(r#"{"status":3}"#).unwrap();
        assert_eq!(r.status(), CommandStatus::Failed);
        let r: CommandResult = serde_json::from_str(r#"{"status":""}"#).unwrap();
        assert_eq!(r.status, 0);
        // A newer peer's number survives, printed as the number.
        let r = CommandResult {
            status: 42,
            ..Default::default()
        };
        assert_eq!(serde_json::to_value(&r).unwrap()["status"], 42);
        let e = serde_json::from_str::<CommandResult>(r#"{"status":"fine"}"#).unwrap_err();
        assert!(
            e.to_string().contains("ok, partial, failed, unsupported"),
            "{e}"
        );
    }
}
