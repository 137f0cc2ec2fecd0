//! A key-value [`StateMachine`] used by the examples, tests, benchmarks and the simulator's
//! linearizability check.
//!
//! Every command returns the key's value *after* it is applied, so a history records what each
//! operation observed, writes included.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::state_machine::{ReadStateMachine, StateMachine};
use crate::types::LogIndex;

/// A command on the key-value store. Its strings are shared (`Arc<str>`): the log clones a
/// command for each follower it is sent to, for storage and for the state machine, and a
/// shared string makes each clone a reference count instead of a copy. Build one from
/// `&str` or `String` with `.into()`.
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum KvCommand {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: Arc<str>,
        /// The new value.
        value: Arc<str>,
    },
    /// Appends `value` to the key's current value (empty if absent).
    Append {
        /// The key.
        key: Arc<str>,
        /// The suffix.
        value: Arc<str>,
    },
    /// Reads `key` through the log (a linearizable read).
    Get {
        /// The key.
        key: Arc<str>,
    },
}

impl KvCommand {
    /// The key this command touches.
    pub fn key(&self) -> &str {
        match self {
            KvCommand::Put { key, .. } | KvCommand::Append { key, .. } | KvCommand::Get { key } => {
                key
            }
        }
    }

    /// The command's size in bytes: its key and value.
    pub fn size(&self) -> usize {
        match self {
            KvCommand::Put { key, value } | KvCommand::Append { key, value } => {
                key.len() + value.len()
            }
            KvCommand::Get { key } => key.len(),
        }
    }

    /// The model's transition: the key's value after this command, given the value before.
    /// Only an `Append` to a value builds a new string; the rest share one.
    pub fn step(&self, before: &KvOutput) -> KvOutput {
        match (self, before) {
            (KvCommand::Put { value, .. }, _) | (KvCommand::Append { value, .. }, None) => {
                Some(Arc::clone(value))
            }
            (KvCommand::Append { value, .. }, Some(before)) => Some(concat(before, value)),
            (KvCommand::Get { .. }, _) => before.clone(),
        }
    }
}

/// `a` then `b` in one new shared string (as `format!("{a}{b}")`, without the formatter).
fn concat(a: &str, b: &str) -> Arc<str> {
    let mut joined = String::with_capacity(a.len() + b.len());
    joined.push_str(a);
    joined.push_str(b);
    joined.into()
}

/// The derived `Debug` text, written without the formatter's struct builders when no flag
/// asks for more: the simulator formats every command it traces and hashes every log entry's
/// text, and the builders were a tenth of that cost. The text is the derived one exactly
/// (`debug_matches_the_derived_text`).
impl std::fmt::Debug for KvCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if f.alternate() || f.width().is_some() || f.precision().is_some() {
            return DerivedKvCommand::of(self).fmt(f);
        }
        match self {
            KvCommand::Put { key, value } => {
                f.write_str("Put { key: ")?;
                debug_str(key, f)?;
                f.write_str(", value: ")?;
                debug_str(value, f)?;
            }
            KvCommand::Append { key, value } => {
                f.write_str("Append { key: ")?;
                debug_str(key, f)?;
                f.write_str(", value: ")?;
                debug_str(value, f)?;
            }
            KvCommand::Get { key } => {
                f.write_str("Get { key: ")?;
                debug_str(key, f)?;
            }
        }
        f.write_str(" }")
    }
}

/// `{:?}` of a string: quoted as is when nothing in it needs escaping (printable ASCII but
/// `"` and `\`), else the standard escaping.
fn debug_str(s: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    let plain = s.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
    if !plain {
        return std::fmt::Debug::fmt(s, f);
    }
    f.write_str("\"")?;
    f.write_str(s)?;
    f.write_str("\"")
}

/// The shape `#[derive(Debug)]` gives [`KvCommand`], for the formatter flags the fast path
/// leaves to it (and to test that the fast path writes the same text).
#[derive(Debug)]
enum DerivedKvCommand<'a> {
    #[allow(dead_code)] // read by the derived Debug only
    Put { key: &'a str, value: &'a str },
    #[allow(dead_code)]
    Append { key: &'a str, value: &'a str },
    #[allow(dead_code)]
    Get { key: &'a str },
}

impl<'a> DerivedKvCommand<'a> {
    fn of(command: &'a KvCommand) -> Self {
        match command {
            KvCommand::Put { key, value } => DerivedKvCommand::Put { key, value },
            KvCommand::Append { key, value } => DerivedKvCommand::Append { key, value },
            KvCommand::Get { key } => DerivedKvCommand::Get { key },
        }
    }
}

/// The output of every [`KvCommand`]: the key's value after the command was applied. Shared
/// with the store (`Arc<str>`): an answer is a reference count, not a copy of the value.
pub type KvOutput = Option<Arc<str>>;

/// An in-memory ordered map. Values are shared strings: a `Put` stores the command's own value,
/// and reads and outputs share it.
#[derive(Clone, Debug, Default)]
pub struct KvStateMachine {
    data: BTreeMap<String, Arc<str>>,
}

impl KvStateMachine {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.data.get(key).map(|value| &**value)
    }

    /// The current value of `key`, shared with the store (what reads and outputs answer).
    pub fn value(&self, key: &str) -> KvOutput {
        self.data.get(key).cloned()
    }

    /// Every key that starts with `prefix`, with its value, in key order.
    ///
    /// ```
    /// use ferraft::{KvCommand, KvStateMachine, LogIndex, StateMachine};
    ///
    /// let mut kv = KvStateMachine::new();
    /// for (i, key) in ["a/1", "b/1", "a/2"].into_iter().enumerate() {
    ///     let put = KvCommand::Put { key: key.into(), value: i.to_string().into() };
    ///     kv.apply(LogIndex(i as u64 + 1), &put);
    /// }
    /// let found: Vec<_> = kv.with_prefix("a/").collect();
    /// assert_eq!(found, [("a/1", "0"), ("a/2", "2")]);
    /// ```
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        let from = std::ops::Bound::Included(prefix.to_owned());
        self.data
            .range((from, std::ops::Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), &**v))
    }

    /// The number of keys stored.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the store holds no keys.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Reads without the log: the query is a key, the answer its value.
impl ReadStateMachine for KvStateMachine {
    type Query = String;
    type Answer = KvOutput;

    fn query(&self, key: &String) -> KvOutput {
        self.value(key)
    }
}

impl StateMachine for KvStateMachine {
    type Command = KvCommand;
    type Output = KvOutput;

    /// [`KvCommand::step`] on the stored value. A `Put` stores the command's value itself (no
    /// copy), an `Append` a new string; no new key string when the key exists.
    fn apply(&mut self, _index: LogIndex, command: &KvCommand) -> KvOutput {
        let (key, value) = match command {
            KvCommand::Get { key } => return self.data.get(&**key).cloned(),
            KvCommand::Put { key, value } | KvCommand::Append { key, value } => (key, value),
        };
        let Some(stored) = self.data.get_mut(&**key) else {
            self.data.insert(key.to_string(), Arc::clone(value));
            return Some(Arc::clone(value));
        };
        *stored = match command {
            KvCommand::Append { .. } if !stored.is_empty() => concat(stored, value),
            _ => Arc::clone(value),
        };
        Some(Arc::clone(stored))
    }

    /// Length-prefixed keys and values, in key order (a stable byte form).
    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.data.len() as u64).to_le_bytes());
        for (key, value) in &self.data {
            for part in [key.as_str(), value] {
                out.extend_from_slice(&(part.len() as u64).to_le_bytes());
                out.extend_from_slice(part.as_bytes());
            }
        }
        out
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let mut reader = Reader(snapshot);
        let count = reader.u64()?;
        let mut data = BTreeMap::new();
        for _ in 0..count {
            let key = reader.string()?;
            let value = reader.string()?;
            data.insert(key, value.into());
        }
        if !reader.0.is_empty() {
            return Err(format!("{} bytes after the last pair", reader.0.len()));
        }
        self.data = data; // NB: only once every pair was read: never half-restored
        Ok(())
    }

    fn command_size(command: &KvCommand) -> usize {
        command.size()
    }

    fn digest(&self) -> u64 {
        fnv1a(self.data.iter().flat_map(|(k, v)| [k.as_bytes(), &[0], v.as_bytes(), &[1]]))
    }
}

/// Reads what `KvStateMachine::snapshot` wrote, refusing truncated or malformed bytes.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u64(&mut self) -> Result<u64, String> {
        let (head, rest) = self.0.split_at_checked(8).ok_or("truncated length")?;
        self.0 = rest;
        Ok(u64::from_le_bytes(head.try_into().expect("8 bytes")))
    }

    fn string(&mut self) -> Result<String, String> {
        let len = usize::try_from(self.u64()?).map_err(|_| "length overflows")?;
        let (head, rest) = self.0.split_at_checked(len).ok_or("truncated string")?;
        self.0 = rest;
        String::from_utf8(head.to_vec()).map_err(|e| format!("not UTF-8: {e}"))
    }
}

/// FNV-1a over a sequence of byte slices: a stable, dependency-free digest.
pub fn fnv1a<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        for &byte in part {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_follows_the_model_step() {
        let mut sm = KvStateMachine::new();
        let mut model: BTreeMap<String, Arc<str>> = BTreeMap::new();
        let (key, value) = (|i: u64| format!("k{}", i % 3), |i: u64| format!("v{i};"));
        for i in 0..60u64 {
            let c = match i * 7 % 5 {
                0 | 1 => KvCommand::Append { key: key(i).into(), value: value(i).into() },
                2 => KvCommand::Put { key: key(i).into(), value: value(i).into() },
                _ => KvCommand::Get { key: key(i).into() },
            };
            let after = c.step(&model.get(c.key()).cloned());
            if let (Some(v), false) = (&after, matches!(c, KvCommand::Get { .. })) {
                model.insert(c.key().to_owned(), v.clone());
            }
            assert_eq!(sm.apply(LogIndex(i + 1), &c), after, "{c:?}");
        }
        assert_eq!(sm.data, model);
    }

    #[test]
    fn debug_matches_the_derived_text() {
        let texts =
            ["", "k1", "c3-17;", "a \"quoted\" \\ back", "tab\tnew\nline", "é ü 日本", "\u{7f}\0"];
        for key in texts {
            for value in texts {
                let (key, value) = (key.to_string(), value.to_string());
                for c in [
                    KvCommand::Put { key: key.clone().into(), value: value.clone().into() },
                    KvCommand::Append { key: key.clone().into(), value: value.into() },
                    KvCommand::Get { key: key.clone().into() },
                ] {
                    let derived = DerivedKvCommand::of(&c);
                    assert_eq!(format!("{c:?}"), format!("{derived:?}"));
                    assert_eq!(format!("{c:#?}"), format!("{derived:#?}"));
                    assert_eq!(format!("{c:>40?}"), format!("{derived:>40?}"));
                    let payload = crate::message::Payload::Command(c.clone());
                    assert!(format!("{payload:?}").contains(&format!("{derived:?}")));
                }
            }
        }
    }
}
