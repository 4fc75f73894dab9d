//! The frozen layers' output per training sequence, kept so that each note pays for the frozen
//! layers once: in memory for the run, and optionally on disk for later runs and `--resume`.
//!
//! States are `[len, hidden]` rows rounded to f16 whether they were just computed or read back,
//! so a run sees the same bits from either source. On disk the cache lives in
//! `ROOT/<fingerprint>/`, where the fingerprint hashes the frozen tensors themselves (the token
//! embeddings and every frozen layer), the decoder configuration and the frozen depth: another
//! base, another depth or changed weights give another directory, never a stale hit. An entry is
//! keyed by the sequence's token ids, which already encode the prompt version, the variant, the
//! field budgets and the note's content; the file repeats the ids and the reader compares them,
//! so a hash collision or a torn file is a miss, never a wrong state.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::f16;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"NLFROZ01";

/// One sequence's frozen states, `[len, hidden]` row-major.
pub type States = Arc<[f16]>;

/// What the frozen pass did in a run (logged in `train.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FrozenStats {
    /// Sequences run through the frozen layers.
    pub computed: usize,
    /// Their real tokens (shared prefixes counted once per batch are not counted again).
    pub tokens: usize,
    /// Sequences read back from the disk cache.
    pub from_disk: usize,
    /// Wall seconds spent computing (not reading).
    pub seconds: f64,
}

impl FrozenStats {
    /// Sequences computed per second of the frozen pass.
    pub fn per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.computed as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// In-memory states plus the optional disk cache.
#[derive(Debug, Default)]
pub struct FrozenCache {
    mem: HashMap<Vec<u32>, States>,
    disk: Option<DiskCache>,
    bytes: usize,
    pub stats: FrozenStats,
}

impl FrozenCache {
    pub fn get(&self, ids: &[u32]) -> Option<&States> {
        self.mem.get(ids)
    }

    pub fn contains(&self, ids: &[u32]) -> bool {
        self.mem.contains_key(ids)
    }

    pub fn insert(&mut self, ids: Vec<u32>, states: States) {
        self.bytes += states.len() * 2;
        if let Some(old) = self.mem.insert(ids, states) {
            self.bytes -= old.len() * 2;
        }
    }

    /// Bytes held in memory.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drops every state held in memory (the disk cache and the stats stay).
    pub fn clear_memory(&mut self) {
        self.mem.clear();
        self.bytes = 0;
    }

    pub fn set_disk(&mut self, disk: DiskCache) {
        self.disk = Some(disk);
    }

    pub fn disk(&self) -> Option<&DiskCache> {
        self.disk.as_ref()
    }
}

/// Rounds f32 states to the cache's f16.
pub fn to_f16(x: &[f32]) -> States {
    x.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>().into()
}

/// A directory of per-sequence state files for one (base, depth) fingerprint.
#[derive(Debug, Clone)]
pub struct DiskCache {
    dir: PathBuf,
    hidden: usize,
}

impl DiskCache {
    /// `root/<fingerprint>/`, created if missing.
    pub fn open(root: &Path, fingerprint: &str, hidden: usize) -> std::io::Result<Self> {
        let dir = root.join(fingerprint);
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir, hidden })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, ids: &[u32]) -> PathBuf {
        let mut h = Sha256::new();
        for id in ids {
            h.update(id.to_le_bytes());
        }
        let hex = hex(&h.finalize()[..16]);
        self.dir.join(&hex[..2]).join(format!("{}.f16", &hex[2..]))
    }

    /// The states of `ids` if a complete entry for exactly these ids is there.
    pub fn read(&self, ids: &[u32]) -> Option<States> {
        let path = self.path(ids);
        let bytes = std::fs::read(&path).ok()?;
        match decode(&bytes, ids, self.hidden) {
            Some(s) => Some(s),
            None => {
                tracing::warn!(path = %path.display(), "frozen-state cache entry does not match; recomputing");
                None
            }
        }
    }

    /// Writes an entry atomically (a temporary file renamed into place).
    pub fn write(&self, ids: &[u32], states: &[f16]) -> std::io::Result<()> {
        let path = self.path(ids);
        let parent = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(parent)?;
        let tmp = parent.join(format!(".{}.tmp", std::process::id()));
        {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            f.write_all(&encode(ids, self.hidden, states))?;
            f.flush()?;
        }
        std::fs::rename(&tmp, &path)
    }
}

fn encode(ids: &[u32], hidden: usize, states: &[f16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + ids.len() * 4 + states.len() * 2);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    out.extend_from_slice(&(hidden as u32).to_le_bytes());
    for id in ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
    for v in states {
        out.extend_from_slice(&v.to_bits().to_le_bytes());
    }
    out
}

fn decode(bytes: &[u8], ids: &[u32], hidden: usize) -> Option<States> {
    let u32_at = |i: usize| -> Option<u32> { Some(u32::from_le_bytes(bytes.get(i..i + 4)?.try_into().ok()?)) };
    if bytes.get(..8)? != MAGIC || u32_at(8)? as usize != ids.len() || u32_at(12)? as usize != hidden {
        return None;
    }
    let body = 16 + ids.len() * 4;
    if bytes.len() != body + ids.len() * hidden * 2 {
        return None;
    }
    if ids.iter().enumerate().any(|(i, &id)| u32_at(16 + 4 * i) != Some(id)) {
        return None;
    }
    let states: Vec<f16> =
        bytes[body..].chunks_exact(2).map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]]))).collect();
    Some(states.into())
}

/// A stable hash of the frozen part of a model: what decides its frozen states.
pub fn fingerprint<'a>(
    parts: impl Iterator<Item = (&'a str, &'a [usize], &'a [f32])>,
    config: &str,
    depth: usize,
) -> String {
    let mut h = Sha256::new();
    h.update(MAGIC);
    h.update(config.as_bytes());
    h.update((depth as u64).to_le_bytes());
    for (name, dims, data) in parts {
        h.update(name.as_bytes());
        h.update([0]);
        for d in dims {
            h.update((*d as u64).to_le_bytes());
        }
        for v in data {
            h.update(v.to_le_bytes());
        }
    }
    hex(&h.finalize()[..12])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Length of the longest token prefix every sequence shares.
pub fn common_prefix(seqs: &[&[u32]]) -> usize {
    let Some(first) = seqs.first() else { return 0 };
    let mut n = first.len();
    for s in &seqs[1..] {
        n = n.min(s.iter().zip(first.iter()).take_while(|(a, b)| a == b).count());
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_reject_other_ids_or_torn_files() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskCache::open(dir.path(), "abc", 3).unwrap();
        let ids = [5u32, 6];
        let states = to_f16(&[1.0, -2.5, 3.25, 0.0, 1e-3, 65504.0]);
        assert!(disk.read(&ids).is_none());
        disk.write(&ids, &states).unwrap();
        assert_eq!(disk.read(&ids).unwrap(), states);
        assert!(disk.read(&[5, 7]).is_none());
        // a torn (truncated) file is a miss
        let path = disk.path(&ids);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(disk.read(&ids).is_none());
        // another hidden size reads nothing
        disk.write(&ids, &states).unwrap();
        let other = DiskCache::open(dir.path(), "abc", 2).unwrap();
        assert!(other.read(&ids).is_none());
    }

    #[test]
    fn fingerprint_moves_with_weights_config_and_depth() {
        let w = [1.0f32, 2.0];
        let base = fingerprint([("a", &[2usize][..], &w[..])].into_iter(), "cfg", 3);
        assert_eq!(base, fingerprint([("a", &[2usize][..], &w[..])].into_iter(), "cfg", 3));
        assert_ne!(base, fingerprint([("a", &[2usize][..], &[1.0f32, 2.5][..])].into_iter(), "cfg", 3));
        assert_ne!(base, fingerprint([("a", &[2usize][..], &w[..])].into_iter(), "cfg2", 3));
        assert_ne!(base, fingerprint([("a", &[2usize][..], &w[..])].into_iter(), "cfg", 4));
    }

    #[test]
    fn common_prefix_of_sequences() {
        assert_eq!(common_prefix(&[&[1, 2, 3], &[1, 2, 4], &[1, 2]]), 2);
        assert_eq!(common_prefix(&[&[1, 2, 3]]), 3);
        assert_eq!(common_prefix(&[&[1], &[2]]), 0);
        assert_eq!(common_prefix(&[]), 0);
    }
}
