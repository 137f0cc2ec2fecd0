//! A key-value [`StateMachine`] used by the examples, tests, benchmarks and the simulator's
//! linearizability check.
//!
//! Every command returns the key's value *after* it is applied, so a history records what each
//! operation observed, writes included.

use std::collections::BTreeMap;

use crate::state_machine::{ReadStateMachine, StateMachine};
use crate::types::LogIndex;

/// A command on the key-value store.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum KvCommand {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: String,
    },
    /// Appends `value` to the key's current value (empty if absent).
    Append {
        /// The key.
        key: String,
        /// The suffix.
        value: String,
    },
    /// Reads `key` through the log (a linearizable read).
    Get {
        /// The key.
        key: String,
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
    pub fn step(&self, before: Option<&str>) -> Option<String> {
        match self {
            KvCommand::Put { value, .. } => Some(value.clone()),
            KvCommand::Append { value, .. } => Some(format!("{}{}", before.unwrap_or(""), value)),
            KvCommand::Get { .. } => before.map(str::to_owned),
        }
    }
}

/// The output of every [`KvCommand`]: the key's value after the command was applied.
pub type KvOutput = Option<String>;

/// An in-memory ordered map.
#[derive(Clone, Debug, Default)]
pub struct KvStateMachine {
    data: BTreeMap<String, String>,
}

impl KvStateMachine {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.data.get(key).map(String::as_str)
    }

    /// Every key that starts with `prefix`, with its value, in key order.
    ///
    /// ```
    /// use ferraft::{KvCommand, KvStateMachine, LogIndex, StateMachine};
    ///
    /// let mut kv = KvStateMachine::new();
    /// for (i, key) in ["a/1", "b/1", "a/2"].into_iter().enumerate() {
    ///     let put = KvCommand::Put { key: key.into(), value: i.to_string() };
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
            .map(|(k, v)| (k.as_str(), v.as_str()))
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
        self.get(key).map(str::to_owned)
    }
}

impl StateMachine for KvStateMachine {
    type Command = KvCommand;
    type Output = KvOutput;

    fn apply(&mut self, _index: LogIndex, command: &KvCommand) -> KvOutput {
        let after = command.step(self.get(command.key()));
        if let Some(value) = &after {
            if !matches!(command, KvCommand::Get { .. }) {
                self.data.insert(command.key().to_owned(), value.clone());
            }
        }
        after
    }

    /// Length-prefixed keys and values, in key order (a stable byte form).
    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.data.len() as u64).to_le_bytes());
        for (key, value) in &self.data {
            for part in [key, value] {
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
            data.insert(key, value);
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
