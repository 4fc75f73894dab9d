//! Index snapshots on disk: hnsw_rs's own graph dump plus our id map, checksummed, swapped in
//! atomically.
//!
//! Layout under the data directory:
//!
//! ```text
//! index.current                  name of the live snapshot folder (replaced by temp + rename)
//! index-<seq>-<nonce>/
//!     manifest.json              format version, the store position (seq and its witness),
//!                                dim, m, ef_construction, point counts, the size and checksum
//!                                of each file below, and its own checksum
//!     ids.bin                    live (note id, internal id) pairs
//!     graph.hnsw.graph           hnsw_rs dump: layers and links (absent for an empty graph)
//!     graph.hnsw.data            hnsw_rs dump: vectors
//! ```
//!
//! A save writes `index-<seq>-<nonce>.tmp/`, fsyncs it, renames it, then points `index.current`
//! at it, and only then deletes older folders: a crash at any point leaves the previous snapshot
//! (or none) readable. A load verifies every checksum before handing a byte to hnsw_rs, whose
//! reader panics (or exits) on malformed input; its panics are also caught. Any failure is a
//! typed error, and the caller rebuilds from the store.
//!
//! The manifest checksums itself too, so a hand-edited seq is corrupt rather than trusted. The
//! position it records ([`StorePosition`]: the store's seq and the write that seq names) is what
//! the caller checks against the store before replaying from it: a snapshot is only a cache of
//! the store, and one the store contradicts (a store restored from an older backup, say) must
//! be rebuilt, not followed.
//!
//! Why the hnsw_rs dump rather than ids + vectors with a rebuild on load: reloading the graph
//! keeps search results identical across a restart and is an order of magnitude faster than
//! rebuilding it (figures in `index/mod.rs`).

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

use hnsw_rs::api::AnnT;
use hnsw_rs::hnswio::HnswIo;
use serde::{Deserialize, Serialize};

use notellm_note::NoteId;

use super::checksum::Checksum;
use super::dist::UnitDot;
use super::graph::{Graph, Hnsw};
use super::ids::IdMap;
use super::{IndexConfig, IndexError};

/// Bump on any change of the layout or of the files' encodings. (2: the manifest's own checksum
/// and the store position's witness.)
pub const FORMAT_VERSION: u32 = 2;
const FORMAT_NAME: &str = "notellm-index";
const CURRENT: &str = "index.current";
/// What [`write_atomically`] names the temp file of [`CURRENT`] (`index.tmp-<pid>`).
const CURRENT_TMP: &str = "index.tmp-";
const PREFIX: &str = "index-";
const MANIFEST: &str = "manifest.json";
const IDS: &str = "ids.bin";
const GRAPH_BASENAME: &str = "graph";
const GRAPH_FILES: [&str; 2] = ["graph.hnsw.graph", "graph.hnsw.data"];
const IDS_MAGIC: &[u8; 8] = b"NLIDMAP1";

/// Where in the store's change sequence a snapshot stands: it holds every change up to `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorePosition {
    pub seq: i64,
    /// The latest write with a seq at or below `seq` when the snapshot was taken (`None` when
    /// the store had none). A store in which that note's current write is neither this one nor
    /// one after `seq` is not the store this snapshot came from.
    pub witness: Option<Witness>,
}

impl StorePosition {
    /// A position without a witness (an empty store, or tests).
    pub fn at(seq: i64) -> Self {
        Self { seq, witness: None }
    }
}

/// One write of the store: the note it touched and the seq it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Witness {
    pub note_id: NoteId,
    pub seq: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: String,
    format_version: u32,
    position: StorePosition,
    dim: usize,
    m: usize,
    ef_construction: usize,
    distance: String,
    /// Points in the graph, tombstones included.
    points: usize,
    live: usize,
    files: Vec<FileEntry>,
    /// Hex of [`Checksum`] over this manifest's compact JSON with this field empty.
    checksum: String,
}

impl Manifest {
    /// The checksum of everything but the checksum field.
    fn own_checksum(&mut self) -> Result<String, serde_json::Error> {
        let kept = std::mem::take(&mut self.checksum);
        let bytes = serde_json::to_vec(self);
        self.checksum = kept;
        Ok(format!("{:016x}", Checksum::of(&bytes?)))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct FileEntry {
    name: String,
    bytes: u64,
    /// Hex of [`Checksum`].
    checksum: String,
}

fn distance_name() -> String {
    std::any::type_name::<UnitDot>().to_owned()
}

/// Writes `graph` as the current snapshot of `dir`. The caller holds the writer lock.
pub fn save(graph: &Graph, cfg: &IndexConfig, dir: &Path, position: &StorePosition) -> Result<(), IndexError> {
    let start = Instant::now();
    let seq = position.seq;
    fs::create_dir_all(dir).map_err(|e| IndexError::io(dir, e))?;
    let nonce =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    let name = format!("{PREFIX}{seq}-{}-{nonce}", std::process::id());
    let tmp = dir.join(format!("{name}.tmp"));
    fs::create_dir(&tmp).map_err(|e| IndexError::io(&tmp, e))?;
    let written = write_folder(graph, cfg, &tmp, position);
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let live = dir.join(&name);
    fs::rename(&tmp, &live).map_err(|e| IndexError::io(&live, e))?;
    sync_dir(dir)?;
    write_atomically(&dir.join(CURRENT), name.as_bytes())?;
    remove_stale(dir, &name);
    let (points, secs) = (graph.hnsw.get_nb_point(), start.elapsed().as_secs_f32());
    tracing::info!(dir = %live.display(), seq, points, secs, "index snapshot saved");
    Ok(())
}

fn write_folder(graph: &Graph, cfg: &IndexConfig, folder: &Path, position: &StorePosition) -> Result<(), IndexError> {
    let (ids_bytes, live, allocated) = {
        let ids = graph.ids();
        (encode_ids(&ids), ids.len(), ids.allocated())
    };
    let ids_path = folder.join(IDS);
    write_synced(&ids_path, &ids_bytes)?;
    let mut files = vec![FileEntry {
        name: IDS.into(),
        bytes: ids_bytes.len() as u64,
        checksum: format!("{:016x}", Checksum::of(&ids_bytes)),
    }];
    let points = graph.hnsw.get_nb_point();
    if points > 0 {
        // hnsw_rs panics when it cannot create its files, and errors out on an empty graph.
        let dumped = catch_unwind(AssertUnwindSafe(|| graph.hnsw.file_dump(folder, GRAPH_BASENAME)));
        match dumped {
            Ok(Ok(basename)) if basename == GRAPH_BASENAME => {}
            Ok(Ok(other)) => return Err(IndexError::corrupt(folder, format!("hnsw_rs dumped to {other:?}"))),
            Ok(Err(e)) => return Err(IndexError::io(folder, std::io::Error::other(e.to_string()))),
            Err(_) => return Err(IndexError::io(folder, std::io::Error::other("hnsw_rs dump panicked"))),
        }
        for name in GRAPH_FILES {
            let path = folder.join(name);
            File::open(&path).and_then(|f| f.sync_all()).map_err(|e| IndexError::io(&path, e))?;
            let (bytes, sum) = checksum_file(&path)?;
            files.push(FileEntry { name: name.into(), bytes, checksum: format!("{sum:016x}") });
        }
    }
    let mut manifest = Manifest {
        format: FORMAT_NAME.into(),
        format_version: FORMAT_VERSION,
        position: position.clone(),
        dim: cfg.dim,
        m: cfg.m,
        ef_construction: cfg.ef_construction,
        distance: distance_name(),
        points: points.max(allocated),
        live,
        files,
        checksum: String::new(),
    };
    let json_err = |e| IndexError::io(folder, std::io::Error::other(e));
    manifest.checksum = manifest.own_checksum().map_err(json_err)?;
    let json = serde_json::to_vec_pretty(&manifest).map_err(json_err)?;
    write_synced(&folder.join(MANIFEST), &json)?;
    sync_dir(folder)
}

/// Loads the snapshot `dir/index.current` points at: `Ok(None)` when there is none.
pub fn load(dir: &Path, cfg: &IndexConfig) -> Result<Option<(Graph, StorePosition)>, IndexError> {
    let start = Instant::now();
    let current = dir.join(CURRENT);
    let name = match fs::read_to_string(&current) {
        Ok(s) => s.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(IndexError::io(&current, e)),
    };
    if !name.starts_with(PREFIX) || name.contains(['/', '\\']) || name.contains("..") {
        return Err(IndexError::corrupt(&current, format!("bad snapshot name {name:?}")));
    }
    let folder = dir.join(&name);
    let manifest_path = folder.join(MANIFEST);
    let manifest_bytes = fs::read(&manifest_path).map_err(|e| IndexError::io(&manifest_path, e))?;
    let manifest = read_manifest(&manifest_bytes, &manifest_path)?;
    check_compatible(&manifest, cfg, &manifest_path)?;
    for f in &manifest.files {
        if f.name.contains(['/', '\\']) || f.name.contains("..") {
            return Err(IndexError::corrupt(&manifest_path, format!("bad file name {:?}", f.name)));
        }
        let path = folder.join(&f.name);
        let (bytes, sum) = checksum_file(&path)?;
        if bytes != f.bytes || format!("{sum:016x}") != f.checksum {
            return Err(IndexError::corrupt(
                &path,
                format!("{} bytes, checksum {sum:016x}; manifest says {} bytes, {}", bytes, f.bytes, f.checksum),
            ));
        }
    }
    let listed = |n: &str| manifest.files.iter().any(|f| f.name == n);
    if !listed(IDS) {
        return Err(IndexError::corrupt(&manifest_path, "ids.bin not listed"));
    }
    let ids_path = folder.join(IDS);
    let ids_bytes = fs::read(&ids_path).map_err(|e| IndexError::io(&ids_path, e))?;
    let (allocated, entries) = decode_ids(&ids_bytes).map_err(|r| IndexError::corrupt(&ids_path, r))?;
    if entries.len() != manifest.live {
        return Err(IndexError::corrupt(
            &ids_path,
            format!("{} live ids, manifest says {}", entries.len(), manifest.live),
        ));
    }
    let graph = if GRAPH_FILES.iter().all(|n| listed(n)) {
        let hnsw = load_hnsw(&folder, &manifest)?;
        let ids = IdMap::from_entries(allocated.max(manifest.points), entries)
            .map_err(|r| IndexError::corrupt(&ids_path, r))?;
        let graph = Graph::from_parts(cfg, hnsw, ids);
        check_graph(&graph, &folder)?;
        graph
    } else if manifest.points == 0 && entries.is_empty() {
        Graph::new(cfg, cfg.max_elements)
    } else {
        return Err(IndexError::corrupt(&manifest_path, "graph files not listed"));
    };
    let (live, points, secs) = (manifest.live, manifest.points, start.elapsed().as_secs_f32());
    tracing::info!(dir = %folder.display(), seq = manifest.position.seq, live, points, secs, "index snapshot loaded");
    Ok(Some((graph, manifest.position)))
}

/// Parses the manifest: another format version is incompatible (checked first, so that an
/// older layout reads as such), a checksum mismatch corrupt.
fn read_manifest(bytes: &[u8], path: &Path) -> Result<Manifest, IndexError> {
    #[derive(Deserialize)]
    struct Header {
        format: String,
        format_version: u32,
    }
    let corrupt = |e: serde_json::Error| IndexError::corrupt(path, format!("manifest: {e}"));
    let header: Header = serde_json::from_slice(bytes).map_err(corrupt)?;
    if header.format != FORMAT_NAME || header.format_version != FORMAT_VERSION {
        return Err(IndexError::incompatible(
            path,
            format!("format {} v{}, expected {FORMAT_NAME} v{FORMAT_VERSION}", header.format, header.format_version),
        ));
    }
    let mut manifest: Manifest = serde_json::from_slice(bytes).map_err(corrupt)?;
    let expected = manifest.own_checksum().map_err(corrupt)?;
    if manifest.checksum != expected {
        return Err(IndexError::corrupt(
            path,
            format!("manifest checksum {:?}, its content gives {expected}", manifest.checksum),
        ));
    }
    Ok(manifest)
}

/// The manifest's graph against `cfg` (its format version is checked on reading).
fn check_compatible(m: &Manifest, cfg: &IndexConfig, path: &Path) -> Result<(), IndexError> {
    if m.distance != distance_name() {
        return Err(IndexError::incompatible(path, format!("distance {}, expected {}", m.distance, distance_name())));
    }
    let ours = (cfg.dim, cfg.m, cfg.ef_construction);
    let theirs = (m.dim, m.m, m.ef_construction);
    if ours != theirs {
        return Err(IndexError::incompatible(
            path,
            format!("built with (dim, m, ef_construction) = {theirs:?}, config has {ours:?}"),
        ));
    }
    Ok(())
}

/// Reloads the hnsw_rs dump (checksums already verified).
fn load_hnsw(folder: &Path, manifest: &Manifest) -> Result<Hnsw, IndexError> {
    // The reloaded graph borrows its `HnswIo` ('a: 'b) even when, as here, every point owns its
    // vector. One small `HnswIo` is leaked per load (once per process start) to get `'static`.
    let io: &'static HnswIo = Box::leak(Box::new(HnswIo::new(folder, GRAPH_BASENAME)));
    let loaded = catch_unwind(AssertUnwindSafe(|| io.load_hnsw_with_dist::<f32, UnitDot>(UnitDot)));
    let mut hnsw = match loaded {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return Err(IndexError::corrupt(folder, format!("hnsw_rs reload: {e}"))),
        Err(_) => return Err(IndexError::corrupt(folder, "hnsw_rs reload panicked")),
    };
    // hnsw_rs's reload turns this on; a freshly built graph has it off. Keep inserts identical.
    hnsw.set_extend_candidates(false);
    if hnsw.get_nb_point() != manifest.points {
        return Err(IndexError::corrupt(
            folder,
            format!("graph has {} points, manifest says {}", hnsw.get_nb_point(), manifest.points),
        ));
    }
    if usize::from(hnsw.get_max_nb_connection()) != manifest.m {
        return Err(IndexError::corrupt(folder, "graph m differs from manifest"));
    }
    let dim = hnsw.get_point_indexation().get_data_dimension();
    if dim != manifest.dim {
        return Err(IndexError::corrupt(
            folder,
            format!("graph vectors have dim {dim}, manifest says {}", manifest.dim),
        ));
    }
    Ok(hnsw)
}

/// Every live id must be a point of the graph, with a vector of the right size; and fresh ids
/// must not collide with any point.
fn check_graph(graph: &Graph, folder: &Path) -> Result<(), IndexError> {
    let dim = graph.hnsw.get_point_indexation().get_data_dimension();
    let mut ids = graph.ids_mut();
    let mut present = vec![false; ids.allocated()];
    let mut bad_dim = false;
    let mut max_id = 0;
    graph.for_each_point(|id, v| {
        bad_dim |= v.len() != dim;
        max_id = max_id.max(id);
        if let Some(p) = present.get_mut(id) {
            *p = true;
        }
    });
    if bad_dim {
        return Err(IndexError::corrupt(folder, "graph vectors of mixed dimension"));
    }
    if let Some((note, _)) = ids.iter().find(|(_, i)| !present.get(*i).copied().unwrap_or(false)) {
        return Err(IndexError::corrupt(folder, format!("live note {note} has no point in the graph")));
    }
    if max_id >= ids.allocated() {
        let extra = max_id + 1 - ids.allocated();
        ids.allocate(extra);
    }
    Ok(())
}

/// `magic, allocated: u64, count: u64, count x (internal: u64, len: u16, id bytes)`, little-endian.
fn encode_ids(ids: &IdMap) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + ids.len() * 32);
    out.extend_from_slice(IDS_MAGIC);
    out.extend_from_slice(&(ids.allocated() as u64).to_le_bytes());
    out.extend_from_slice(&(ids.len() as u64).to_le_bytes());
    for (note, internal) in ids.iter() {
        let s = note.as_str().as_bytes();
        out.extend_from_slice(&(internal as u64).to_le_bytes());
        out.extend_from_slice(&(s.len() as u16).to_le_bytes());
        out.extend_from_slice(s);
    }
    out
}

fn decode_ids(bytes: &[u8]) -> Result<(usize, Vec<(NoteId, usize)>), String> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(8)? != IDS_MAGIC {
        return Err("bad magic".into());
    }
    let allocated = usize::try_from(r.u64()?).map_err(|_| "allocated overflows usize")?;
    let count = r.u64()?;
    // Each entry takes at least 11 bytes: reject absurd counts before allocating.
    if count > (bytes.len() / 11) as u64 {
        return Err(format!("count {count} does not fit in {} bytes", bytes.len()));
    }
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let internal = usize::try_from(r.u64()?).map_err(|_| "internal id overflows usize")?;
        let len = usize::from(r.u16()?);
        let raw = std::str::from_utf8(r.take(len)?).map_err(|_| "note id is not UTF-8")?;
        let note = NoteId::parse(raw).map_err(|e| e.to_string())?;
        entries.push((note, internal));
    }
    if r.at != bytes.len() {
        return Err(format!("{} trailing bytes", bytes.len() - r.at));
    }
    Ok((allocated, entries))
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or("truncated")?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
}

fn checksum_file(path: &Path) -> Result<(u64, u64), IndexError> {
    let file = File::open(path).map_err(|e| IndexError::io(path, e))?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut sum = Checksum::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).map_err(|e| IndexError::io(path, e))?;
        if n == 0 {
            break;
        }
        sum.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, sum.finish()))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), IndexError> {
    let io = |e| IndexError::io(path, e);
    let file = File::create(path).map_err(io)?;
    let mut w = BufWriter::new(file);
    w.write_all(bytes).map_err(io)?;
    let file = w.into_inner().map_err(|e| IndexError::io(path, e.into_error()))?;
    file.sync_all().map_err(io)
}

/// Temp file in the same directory, fsync, rename over `path`, fsync the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), IndexError> {
    let tmp: PathBuf = path.with_extension(format!("tmp-{}", std::process::id()));
    write_synced(&tmp, bytes)?;
    fs::rename(&tmp, path).map_err(|e| IndexError::io(path, e))?;
    match path.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<(), IndexError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| IndexError::io(dir, e))
}

/// Deletes snapshot folders other than `keep` (older snapshots, crashed saves) and the temp
/// files of `index.current` a crash left behind (`index.tmp-<pid>`). Best effort.
fn remove_stale(dir: &Path, keep: &str) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        let removed = if name.starts_with(PREFIX) && name != keep && path.is_dir() {
            fs::remove_dir_all(&path)
        } else if name.starts_with(CURRENT_TMP) && path.is_file() {
            fs::remove_file(&path)
        } else {
            continue;
        };
        if let Err(e) = removed {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a stale index snapshot file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recall::{synthetic, synthetic_ids, Spread};
    use crate::{Hit, NoteIndex};
    use notellm_note::Embedding;

    fn cfg() -> IndexConfig {
        IndexConfig { m: 8, ef_construction: 64, max_elements: 1_000, ..IndexConfig::new(16) }
    }

    /// 1,500 notes, 100 removed, 100 moved: tombstones included.
    fn sample() -> (NoteIndex, Vec<NoteId>, Vec<Embedding>) {
        let index = NoteIndex::new(cfg()).unwrap();
        let ids = synthetic_ids(1_500);
        let vectors = synthetic(1_500, 16, Spread::Clustered { clusters: 30, noise: 0.8 }, 5);
        let items: Vec<_> = ids.iter().cloned().zip(vectors.iter().cloned()).collect();
        index.upsert_batch(&items).unwrap();
        for i in 0..100 {
            index.remove(&ids[i]);
            index.upsert(&ids[100 + i], &vectors[1_499 - i]).unwrap();
        }
        (index, ids, vectors)
    }

    fn results(index: &NoteIndex, ids: &[NoteId], vectors: &[Embedding]) -> Vec<Vec<Hit>> {
        (0..vectors.len()).step_by(37).map(|q| index.search(&vectors[q], 12, Some(&ids[q])).unwrap()).collect()
    }

    fn only_folder(dir: &Path) -> PathBuf {
        let name = fs::read_to_string(dir.join(CURRENT)).unwrap();
        dir.join(name.trim())
    }

    #[test]
    fn round_trip_gives_identical_search_results() {
        let (index, ids, vectors) = sample();
        let dir = tempfile::tempdir().unwrap();
        index.save_snapshot(dir.path(), &StorePosition::at(42)).unwrap();
        let (loaded, pos) = NoteIndex::load_snapshot(dir.path(), cfg()).unwrap().unwrap();
        assert_eq!(pos, StorePosition::at(42));
        assert_eq!((loaded.len(), loaded.tombstones()), (index.len(), index.tombstones()));
        assert_eq!(results(&loaded, &ids, &vectors), results(&index, &ids, &vectors));
        // The reloaded graph takes new points without id collisions.
        let fresh = NoteId::parse("fresh").unwrap();
        loaded.upsert(&fresh, &vectors[3]).unwrap();
        loaded.upsert(&ids[500], &vectors[7]).unwrap();
        assert_eq!(loaded.search(&vectors[3], 1, Some(&ids[3])).unwrap()[0].id, fresh);
        let hits = loaded.search(&vectors[7], 1_000, None).unwrap();
        assert_eq!(hits.iter().filter(|h| h.id == ids[500]).count(), 1);
        assert!(hits.iter().all(|h| h.id != ids[0]), "removed before the save, stays removed");
        // A reloaded index saves and reloads again.
        loaded.save_snapshot(dir.path(), &StorePosition::at(43)).unwrap();
        let (again, pos) = NoteIndex::load_snapshot(dir.path(), cfg()).unwrap().unwrap();
        assert_eq!(pos, StorePosition::at(43));
        assert_eq!(results(&again, &ids, &vectors), results(&loaded, &ids, &vectors));
    }

    #[test]
    fn missing_snapshot_is_none_and_empty_index_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert!(NoteIndex::load_snapshot(dir.path(), cfg()).unwrap().is_none());
        assert!(NoteIndex::load_snapshot(&dir.path().join("absent"), cfg()).unwrap().is_none());
        let empty = NoteIndex::new(cfg()).unwrap();
        empty.save_snapshot(dir.path(), &StorePosition::at(0)).unwrap();
        let (loaded, pos) = NoteIndex::load_snapshot(dir.path(), cfg()).unwrap().unwrap();
        assert_eq!((loaded.len(), pos), (0, StorePosition::at(0)));
    }

    #[test]
    fn a_new_save_replaces_the_old_one() {
        let (index, _, vectors) = sample();
        let dir = tempfile::tempdir().unwrap();
        index.save_snapshot(dir.path(), &StorePosition::at(1)).unwrap();
        let first = only_folder(dir.path());
        index.upsert(&NoteId::parse("later").unwrap(), &vectors[0]).unwrap();
        index.save_snapshot(dir.path(), &StorePosition::at(2)).unwrap();
        assert!(!first.exists(), "old snapshot folder removed");
        let (loaded, pos) = NoteIndex::load_snapshot(dir.path(), cfg()).unwrap().unwrap();
        assert_eq!(pos, StorePosition::at(2));
        assert!(loaded.contains(&NoteId::parse("later").unwrap()));
        let folders = fs::read_dir(dir.path()).unwrap().flatten().filter(|e| e.path().is_dir()).count();
        assert_eq!(folders, 1);
    }

    fn expect_corrupt(dir: &Path) {
        match NoteIndex::load_snapshot(dir, cfg()) {
            Err(IndexError::Corrupt { .. }) => {}
            other => panic!("expected Corrupt, got {:?}", other.map(|o| o.map(|(_, s)| s))),
        }
    }

    #[test]
    fn corrupt_or_truncated_files_are_errors() {
        let (index, _, _) = sample();
        let dir = tempfile::tempdir().unwrap();
        index.save_snapshot(dir.path(), &StorePosition::at(7)).unwrap();
        let folder = only_folder(dir.path());
        let pristine: Vec<(PathBuf, Vec<u8>)> = [IDS, GRAPH_FILES[0], GRAPH_FILES[1], MANIFEST]
            .iter()
            .map(|n| (folder.join(n), fs::read(folder.join(n)).unwrap()))
            .collect();
        let restore = || {
            for (p, b) in &pristine {
                fs::write(p, b).unwrap();
            }
        };
        for (path, bytes) in &pristine[..3] {
            // One flipped byte in the middle.
            let mut b = bytes.clone();
            let mid = b.len() / 2;
            b[mid] ^= 0x40;
            fs::write(path, &b).unwrap();
            expect_corrupt(dir.path());
            restore();
            // Truncated.
            fs::write(path, &bytes[..bytes.len() - 5]).unwrap();
            expect_corrupt(dir.path());
            restore();
        }
        fs::write(folder.join(MANIFEST), b"{ not json").unwrap();
        expect_corrupt(dir.path());
        restore();
        // A hand-edited position (seq or witness) no longer matches the manifest's checksum.
        let manifest = String::from_utf8(pristine[3].1.clone()).unwrap();
        for edited in
            [manifest.replacen("\"seq\": 7", "\"seq\": 70", 1), manifest.replacen("\"live\": ", "\"live\": 1", 1)]
        {
            assert_ne!(edited, manifest);
            fs::write(folder.join(MANIFEST), edited).unwrap();
            expect_corrupt(dir.path());
        }
        restore();
        fs::write(dir.path().join(CURRENT), "../elsewhere").unwrap();
        expect_corrupt(dir.path());
        fs::write(dir.path().join(CURRENT), "index-missing").unwrap();
        assert!(matches!(NoteIndex::load_snapshot(dir.path(), cfg()), Err(IndexError::Io { .. })));
    }

    #[test]
    fn the_position_and_its_witness_round_trip() {
        let (index, _, _) = sample();
        let dir = tempfile::tempdir().unwrap();
        let witness = Witness { note_id: NoteId::parse("n-17").unwrap(), seq: 40 };
        let position = StorePosition { seq: 42, witness: Some(witness) };
        index.save_snapshot(dir.path(), &position).unwrap();
        let (_, loaded) = NoteIndex::load_snapshot(dir.path(), cfg()).unwrap().unwrap();
        assert_eq!(loaded, position);
    }

    #[test]
    fn an_older_format_is_incompatible_not_corrupt() {
        let (index, _, _) = sample();
        let dir = tempfile::tempdir().unwrap();
        index.save_snapshot(dir.path(), &StorePosition::at(3)).unwrap();
        let path = only_folder(dir.path()).join(MANIFEST);
        let v1 = fs::read_to_string(&path).unwrap().replacen(
            &format!("\"format_version\": {FORMAT_VERSION}"),
            "\"format_version\": 1",
            1,
        );
        fs::write(&path, v1).unwrap();
        assert!(matches!(NoteIndex::load_snapshot(dir.path(), cfg()), Err(IndexError::Incompatible { .. })));
    }

    #[test]
    fn a_save_removes_what_a_crashed_save_left() {
        let (index, _, _) = sample();
        let dir = tempfile::tempdir().unwrap();
        index.save_snapshot(dir.path(), &StorePosition::at(1)).unwrap();
        // kill -9 between writing index.current's temp file and its rename, and mid-folder.
        let stale_file = dir.path().join("index.tmp-999999");
        let stale_folder = dir.path().join("index-2-999999-1.tmp");
        fs::write(&stale_file, "index-2-999999-1").unwrap();
        fs::create_dir(&stale_folder).unwrap();
        index.save_snapshot(dir.path(), &StorePosition::at(2)).unwrap();
        assert!(!stale_file.exists() && !stale_folder.exists());
        assert!(dir.path().join(CURRENT).exists());
        assert_eq!(NoteIndex::load_snapshot(dir.path(), cfg()).unwrap().unwrap().1, StorePosition::at(2));
    }

    #[test]
    fn another_dim_or_graph_config_is_incompatible() {
        let (index, _, _) = sample();
        let dir = tempfile::tempdir().unwrap();
        index.save_snapshot(dir.path(), &StorePosition::at(7)).unwrap();
        let other_dim = IndexConfig { dim: 32, ..cfg() };
        assert!(matches!(NoteIndex::load_snapshot(dir.path(), other_dim), Err(IndexError::Incompatible { .. })));
        let other_m = IndexConfig { m: 12, ..cfg() };
        assert!(matches!(NoteIndex::load_snapshot(dir.path(), other_m), Err(IndexError::Incompatible { .. })));
        // ef_search and the rebuild share are free to change.
        let other_ef = IndexConfig { ef_search: 200, rebuild_tombstone_share: 0.5, ..cfg() };
        assert!(NoteIndex::load_snapshot(dir.path(), other_ef).unwrap().is_some());
    }

    #[test]
    fn ids_codec_rejects_garbage() {
        let mut map = IdMap::with_capacity(4);
        let r = map.allocate(3);
        map.commit(NoteId::parse("a").unwrap(), r.start);
        map.commit(NoteId::parse("b").unwrap(), r.start + 2);
        let bytes = encode_ids(&map);
        let (allocated, mut entries) = decode_ids(&bytes).unwrap();
        entries.sort_by_key(|e| e.1);
        assert_eq!(allocated, 3);
        assert_eq!(entries, vec![(NoteId::parse("a").unwrap(), 0), (NoteId::parse("b").unwrap(), 2)]);
        for cut in 0..bytes.len() {
            assert!(decode_ids(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = bytes.clone();
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_ids(&huge).is_err());
        let mut bad_id = bytes.clone();
        let at = bytes.len() - 1;
        bad_id[at] = b'/';
        assert!(decode_ids(&bad_id).is_err());
    }
}
