//! Block index files (`docs/format/index.md`): writer and mmapped reader.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use m3query_model::{Label, Labels};
use memmap2::Mmap;

use crate::encoding::{Decbuf, put_u32, put_u64, put_uvarint, put_varint};
use crate::error::IoContext;
use crate::fileutil::map_file;
use crate::matchers::PostingsIndex;
use crate::{Error, Result};

pub(crate) const INDEX_MAGIC: u32 = 0x4D33_5149;
pub(crate) const INDEX_VERSION: u8 = 1;
const HEADER: usize = 8;
const TOC_LEN: usize = 52;

/// A chunk as the index records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkMeta {
    pub(crate) min_t: i64,
    pub(crate) max_t: i64,
    pub(crate) r: u64,
}

struct Out {
    w: BufWriter<File>,
    off: u64,
    path: PathBuf,
}

impl Out {
    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.w.write_all(b).ctx("write index", &self.path)?;
        self.off += b.len() as u64;
        Ok(())
    }

    /// Writes `body` followed by its CRC.
    fn put_crc(&mut self, body: &[u8]) -> Result<()> {
        self.put(body)?;
        self.put(&crc32c::crc32c(body).to_be_bytes())
    }
}

/// Writes an index for `series` (sorted by labels, each with chunks in time order) and
/// fsyncs it. Returns the file size.
pub(crate) fn write_index(path: &Path, series: &[(Labels, Vec<ChunkMeta>)]) -> Result<u64> {
    let mut syms: BTreeSet<&str> = BTreeSet::new();
    for (ls, _) in series {
        for l in ls {
            syms.insert(&l.name);
            syms.insert(&l.value);
        }
    }
    let symref: HashMap<&str, u64> = syms
        .iter()
        .enumerate()
        .map(|(i, s)| (*s, i as u64))
        .collect();
    let f = File::create(path).ctx("create index", path)?;
    let mut out = Out {
        w: BufWriter::with_capacity(1 << 20, f),
        off: 0,
        path: path.to_path_buf(),
    };
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(&INDEX_MAGIC.to_be_bytes());
    h[4] = INDEX_VERSION;
    out.put(&h)?;

    // Symbols.
    let off_symbols = out.off;
    let mut body = Vec::new();
    put_u32(&mut body, syms.len() as u32);
    for s in &syms {
        put_uvarint(&mut body, s.len() as u64);
        body.extend_from_slice(s.as_bytes());
    }
    out.put(&(body.len() as u32).to_be_bytes())?;
    out.put_crc(&body)?;

    // Series entries.
    let off_series = out.off;
    let mut offsets = Vec::with_capacity(series.len());
    let mut postings: BTreeMap<(&str, &str), Vec<u32>> = BTreeMap::new();
    let mut len_buf = Vec::new();
    for (id, (ls, chunks)) in series.iter().enumerate() {
        offsets.push(out.off);
        body.clear();
        put_uvarint(&mut body, ls.len() as u64);
        for l in ls {
            put_uvarint(&mut body, symref[&*l.name]);
            put_uvarint(&mut body, symref[&*l.value]);
            postings
                .entry((&l.name, &l.value))
                .or_default()
                .push(id as u32);
        }
        put_uvarint(&mut body, chunks.len() as u64);
        let mut prev: Option<&ChunkMeta> = None;
        for c in chunks {
            match prev {
                None => {
                    put_varint(&mut body, c.min_t);
                    put_uvarint(&mut body, c.max_t.wrapping_sub(c.min_t) as u64);
                    put_uvarint(&mut body, c.r);
                }
                Some(p) => {
                    put_varint(&mut body, c.min_t.wrapping_sub(p.max_t));
                    put_uvarint(&mut body, c.max_t.wrapping_sub(c.min_t) as u64);
                    put_varint(&mut body, c.r.wrapping_sub(p.r) as i64);
                }
            }
            prev = Some(c);
        }
        len_buf.clear();
        put_uvarint(&mut len_buf, body.len() as u64);
        out.put(&len_buf)?;
        out.put_crc(&body)?;
    }

    // Series offsets.
    let off_series_offsets = out.off;
    body.clear();
    put_u32(&mut body, offsets.len() as u32);
    for o in &offsets {
        put_u64(&mut body, *o);
    }
    out.put_crc(&body)?;

    // Postings lists.
    let off_postings = out.off;
    let mut table = Vec::with_capacity(postings.len());
    for ((n, v), ids) in &postings {
        table.push((symref[n], symref[v], out.off));
        body.clear();
        put_u32(&mut body, ids.len() as u32);
        for id in ids {
            put_u32(&mut body, *id);
        }
        out.put_crc(&body)?;
    }

    // Postings offset table.
    let off_table = out.off;
    body.clear();
    put_u32(&mut body, table.len() as u32);
    for (n, v, o) in &table {
        put_uvarint(&mut body, *n);
        put_uvarint(&mut body, *v);
        put_u64(&mut body, *o);
    }
    out.put(&(body.len() as u32).to_be_bytes())?;
    out.put_crc(&body)?;

    // TOC.
    body.clear();
    for x in [
        off_symbols,
        off_series,
        off_series_offsets,
        off_postings,
        off_table,
        series.len() as u64,
    ] {
        put_u64(&mut body, x);
    }
    out.put_crc(&body)?;
    let size = out.off;
    let f = out
        .w
        .into_inner()
        .map_err(|e| Error::io(format!("flush {}", path.display()), e.into_error()))?;
    f.sync_all().ctx("fsync", path)?;
    Ok(size)
}

/// A block's index, mmapped. Symbols and the postings offset table live in memory.
pub(crate) struct IndexReader {
    path: PathBuf,
    map: Mmap,
    symbols: Vec<Arc<str>>,
    /// name → (value, list offset), values sorted.
    postings: HashMap<Arc<str>, Vec<(Arc<str>, u64)>>,
    names: Vec<Arc<str>>,
    series_offsets: usize,
    num_series: u32,
    toc: [u64; 6],
}

impl IndexReader {
    fn corrupt(&self, why: impl Into<String>) -> Error {
        Error::corruption(self.path.display().to_string(), why)
    }

    pub(crate) fn open(path: &Path) -> Result<IndexReader> {
        let map = map_file(path)?;
        let bad = |why: &str| Error::corruption(path.display().to_string(), why.to_string());
        if map.len() < HEADER + TOC_LEN {
            return Err(bad("index file too short"));
        }
        let mut d = Decbuf::new(&map);
        if d.u32().ok() != Some(INDEX_MAGIC)
            || d.u8().ok() != Some(INDEX_VERSION)
            || d.bytes(3).ok() != Some(&[0u8, 0, 0][..])
        {
            return Err(bad("bad index magic or version"));
        }
        let toc_bytes = &map[map.len() - TOC_LEN..];
        let mut t = Decbuf::new(toc_bytes);
        let mut toc = [0u64; 6];
        for x in toc.iter_mut() {
            *x = t.u64().map_err(|e| bad(e.0))?;
        }
        let crc = t.u32().map_err(|e| bad(e.0))?;
        if crc32c::crc32c(&toc_bytes[..48]) != crc {
            return Err(bad("index TOC checksum mismatch"));
        }
        let end = (map.len() - TOC_LEN) as u64;
        if toc[..5].iter().any(|&o| o < HEADER as u64 || o > end) {
            return Err(bad("index TOC offset out of range"));
        }
        let num_series = u32::try_from(toc[5]).map_err(|_| bad("too many series"))?;

        // Symbols.
        let mut d = Decbuf::new(&map[toc[0] as usize..]);
        let len = d.u32().map_err(|e| bad(e.0))? as usize;
        let body = d.bytes(len).map_err(|e| bad(e.0))?;
        let crc = d.u32().map_err(|e| bad(e.0))?;
        if crc32c::crc32c(body) != crc {
            return Err(bad("symbol table checksum mismatch"));
        }
        let mut d = Decbuf::new(body);
        let n = d.u32().map_err(|e| bad(e.0))? as usize;
        let mut symbols = Vec::with_capacity(n.min(body.len()));
        for _ in 0..n {
            symbols.push(Arc::<str>::from(d.str().map_err(|e| bad(e.0))?));
        }

        // Postings offset table.
        let mut d = Decbuf::new(&map[toc[4] as usize..]);
        let len = d.u32().map_err(|e| bad(e.0))? as usize;
        let body = d.bytes(len).map_err(|e| bad(e.0))?;
        let crc = d.u32().map_err(|e| bad(e.0))?;
        if crc32c::crc32c(body) != crc {
            return Err(bad("postings offset table checksum mismatch"));
        }
        let mut d = Decbuf::new(body);
        let n = d.u32().map_err(|e| bad(e.0))? as usize;
        let mut postings: HashMap<Arc<str>, Vec<(Arc<str>, u64)>> = HashMap::new();
        let sym = |i: u64| -> Result<Arc<str>> {
            symbols
                .get(i as usize)
                .cloned()
                .ok_or_else(|| bad("symbol reference out of range"))
        };
        for _ in 0..n {
            let name = sym(d.uvarint().map_err(|e| bad(e.0))?)?;
            let value = sym(d.uvarint().map_err(|e| bad(e.0))?)?;
            let off = d.u64().map_err(|e| bad(e.0))?;
            if off >= end {
                return Err(bad("postings offset out of range"));
            }
            postings.entry(name).or_default().push((value, off));
        }
        let mut names: Vec<Arc<str>> = postings.keys().cloned().collect();
        names.sort();

        // Series offsets: check count and CRC once, read entries in place later.
        let so = toc[2] as usize;
        let mut d = Decbuf::new(&map[so..]);
        let count = d.u32().map_err(|e| bad(e.0))?;
        if count != num_series {
            return Err(bad("series count disagrees with TOC"));
        }
        let table = d.bytes(count as usize * 8).map_err(|e| bad(e.0))?;
        let crc = d.u32().map_err(|e| bad(e.0))?;
        if crc32c::crc32c(&map[so..so + 4 + table.len()]) != crc {
            return Err(bad("series offset table checksum mismatch"));
        }
        Ok(IndexReader {
            path: path.to_path_buf(),
            series_offsets: so + 4,
            map,
            symbols,
            postings,
            names,
            num_series,
            toc,
        })
    }

    pub(crate) fn num_series(&self) -> u32 {
        self.num_series
    }

    pub(crate) fn label_names(&self) -> &[Arc<str>] {
        &self.names
    }

    /// The body of series `id` (without its length and CRC), and the CRC stored after it.
    fn series_body(&self, id: u32) -> Result<(&[u8], u32)> {
        if id >= self.num_series {
            return Err(self.corrupt(format!("series id {id} out of range")));
        }
        let at = self.series_offsets + id as usize * 8;
        let mut d = Decbuf::new(self.map.get(at..at + 8).unwrap_or(&[]));
        let off = d.u64().map_err(|e| self.corrupt(e.0))? as usize;
        let mut d = Decbuf::new(
            self.map
                .get(off..)
                .ok_or_else(|| self.corrupt("series offset out of range"))?,
        );
        let len = d.uvarint_usize().map_err(|e| self.corrupt(e.0))?;
        let body = d.bytes(len).map_err(|e| self.corrupt(e.0))?;
        let crc = d.u32().map_err(|e| self.corrupt(e.0))?;
        Ok((body, crc))
    }

    /// Labels of series `id`; with `chunks`, also its chunk metas.
    pub(crate) fn series(&self, id: u32, chunks: Option<&mut Vec<ChunkMeta>>) -> Result<Labels> {
        let mut refs = Vec::new();
        self.series_refs(id, &mut refs, chunks)?;
        Ok(self.labels_from_refs(&refs))
    }

    /// Appends the labels of series `id` as (name, value) symbol references (checked in
    /// range and sorted by name) to `refs`; with `chunks`, also its chunk metas. Readers that
    /// only compare labels use this and [`IndexReader::symbol_str`] to build no label set.
    pub(crate) fn series_refs(
        &self,
        id: u32,
        refs: &mut Vec<(u32, u32)>,
        chunks: Option<&mut Vec<ChunkMeta>>,
    ) -> Result<()> {
        let (body, crc) = self.series_body(id)?;
        // Checked on every read, not only by `verify`: a flipped chunk reference or time
        // would otherwise read the wrong chunk or skip a right one without an error.
        if crc32c::crc32c(body) != crc {
            return Err(self.corrupt(format!("series {id} checksum mismatch")));
        }
        let mut d = Decbuf::new(body);
        let c = |e: crate::encoding::DecodeError| self.corrupt(e.0);
        let n = d.uvarint_usize().map_err(c)?;
        let nsym = self.symbols.len() as u64;
        let start = refs.len();
        for _ in 0..n {
            let name = d.uvarint().map_err(c)?;
            let value = d.uvarint().map_err(c)?;
            if name >= nsym || value >= nsym {
                return Err(self.corrupt("symbol reference out of range"));
            }
            refs.push((name as u32, value as u32));
        }
        // The symbol table is sorted and unique, so names sort as their references do.
        if !refs[start..].windows(2).all(|w| w[0].0 < w[1].0) {
            return Err(self.corrupt("series labels not sorted"));
        }
        if let Some(out) = chunks {
            let nc = d.uvarint_usize().map_err(c)?;
            let mut prev: Option<ChunkMeta> = None;
            for _ in 0..nc {
                let m = match prev {
                    None => {
                        let min_t = d.varint().map_err(c)?;
                        let max_t = min_t.wrapping_add(d.uvarint().map_err(c)? as i64);
                        let r = d.uvarint().map_err(c)?;
                        ChunkMeta { min_t, max_t, r }
                    }
                    Some(p) => {
                        let min_t = p.max_t.wrapping_add(d.varint().map_err(c)?);
                        let max_t = min_t.wrapping_add(d.uvarint().map_err(c)? as i64);
                        let r = p.r.wrapping_add(d.varint().map_err(c)? as u64);
                        ChunkMeta { min_t, max_t, r }
                    }
                };
                out.push(m);
                prev = Some(m);
            }
        }
        Ok(())
    }

    /// The string of a symbol reference that [`IndexReader::series_refs`] returned.
    #[inline]
    pub(crate) fn symbol_str(&self, r: u32) -> &str {
        self.symbols.get(r as usize).map_or("", |s| s)
    }

    /// A label set from references [`IndexReader::series_refs`] returned.
    pub(crate) fn labels_from_refs(&self, refs: &[(u32, u32)]) -> Labels {
        let sym = |r: u32| {
            self.symbols
                .get(r as usize)
                .cloned()
                .unwrap_or_else(|| Arc::from(""))
        };
        Labels::from_sorted(
            refs.iter()
                .map(|&(n, v)| Label {
                    name: sym(n),
                    value: sym(v),
                })
                .collect(),
        )
    }

    fn postings_at(&self, off: u64) -> Result<Vec<u32>> {
        let mut d = Decbuf::new(self.map.get(off as usize..).unwrap_or(&[]));
        let c = |e: crate::encoding::DecodeError| self.corrupt(e.0);
        let n = d.u32().map_err(c)? as usize;
        let b = d.bytes(n * 4).map_err(c)?;
        let crc = d.u32().map_err(c)?;
        let o = off as usize;
        if crc32c::crc32c(&self.map[o..o + 4 + b.len()]) != crc {
            return Err(self.corrupt("postings list checksum mismatch"));
        }
        let out: Vec<u32> = b
            .chunks_exact(4)
            .map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
            .collect();
        Ok(out)
    }

    fn values(&self, name: &str) -> &[(Arc<str>, u64)] {
        self.postings.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Checks every checksum in the file and that postings are sorted and in range.
    pub(crate) fn verify(&self) -> Result<()> {
        for id in 0..self.num_series {
            let (body, crc) = self.series_body(id)?;
            if crc32c::crc32c(body) != crc {
                return Err(self.corrupt(format!("series {id} checksum mismatch")));
            }
        }
        for vals in self.postings.values() {
            for (_, off) in vals {
                let ids = self.postings_at(*off)?;
                let o = *off as usize;
                let end = o + 4 + ids.len() * 4;
                let mut d = Decbuf::new(self.map.get(end..).unwrap_or(&[]));
                let crc = d.u32().map_err(|e| self.corrupt(e.0))?;
                if crc32c::crc32c(&self.map[o..end]) != crc {
                    return Err(self.corrupt("postings list checksum mismatch"));
                }
                if !ids.windows(2).all(|w| w[0] < w[1]) || ids.iter().any(|&i| i >= self.num_series)
                {
                    return Err(self.corrupt("postings list unsorted or out of range"));
                }
            }
        }
        let _ = self.toc;
        Ok(())
    }
}

impl PostingsIndex for IndexReader {
    type Ref = u32;
    fn postings(&self, name: &str, value: &str) -> Result<Vec<u32>> {
        let vals = self.values(name);
        match vals.binary_search_by(|(v, _)| (**v).cmp(value)) {
            Ok(i) => self.postings_at(vals[i].1),
            Err(_) => Ok(Vec::new()),
        }
    }
    fn postings_len(&self, name: &str, value: &str) -> Result<usize> {
        let vals = self.values(name);
        let Ok(i) = vals.binary_search_by(|(v, _)| (**v).cmp(value)) else {
            return Ok(0);
        };
        // The list's length prefix; the list itself (and its checksum) is read only if the
        // select goes on.
        let mut d = Decbuf::new(self.map.get(vals[i].1 as usize..).unwrap_or(&[]));
        Ok(d.u32().map_err(|e| self.corrupt(e.0))? as usize)
    }
    fn all_postings(&self) -> Result<Vec<u32>> {
        Ok((0..self.num_series).collect())
    }
    fn label_values(&self, name: &str) -> Result<Vec<Arc<str>>> {
        Ok(self.values(name).iter().map(|(v, _)| v.clone()).collect())
    }
    fn label_values_with_prefix(&self, name: &str, prefix: &str) -> Result<Vec<Arc<str>>> {
        let vals = self.values(name);
        let start = vals.partition_point(|(v, _)| &**v < prefix);
        Ok(vals[start..]
            .iter()
            .take_while(|(v, _)| v.starts_with(prefix))
            .map(|(v, _)| v.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matchers::postings_for_matchers;
    use crate::matchers::tests::{NaiveIndex, label_sets, matcher};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Matchers through a written-and-reopened index agree with a naive scan.
        #[test]
        fn index_round_trip_and_matchers(
            sets in label_sets(),
            ms in prop::collection::vec(matcher(), 1..4),
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("index");
            let series: Vec<(Labels, Vec<ChunkMeta>)> = sets
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let i = i as i64;
                    (l.clone(), vec![
                        ChunkMeta { min_t: i * 10 - 500, max_t: i * 10, r: (1 << 32) | (8 + i as u64 * 30) },
                        ChunkMeta { min_t: i * 10 + 1, max_t: i * 20 + 7, r: (1 << 32) | (8 + i as u64 * 30 + 15) },
                    ])
                })
                .collect();
            write_index(&path, &series).expect("write");
            let ix = IndexReader::open(&path).expect("open");
            ix.verify().expect("verify");
            prop_assert_eq!(ix.num_series() as usize, sets.len());
            for (i, (l, cs)) in series.iter().enumerate() {
                let mut got = Vec::new();
                prop_assert_eq!(&ix.series(i as u32, Some(&mut got)).expect("series"), l);
                prop_assert_eq!(&got, cs);
            }
            let naive = NaiveIndex(sets.clone());
            prop_assert_eq!(
                postings_for_matchers(&ix, &ms).expect("index"),
                postings_for_matchers(&naive, &ms).expect("naive")
            );
        }
    }

    #[test]
    fn corrupt_index_is_detected_not_panicking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("index");
        let series = vec![(
            Labels::from_pairs([("__name__", "up"), ("job", "a")]),
            vec![ChunkMeta {
                min_t: 0,
                max_t: 10,
                r: 1 << 32 | 8,
            }],
        )];
        let size = write_index(&path, &series).expect("write") as usize;
        let good = std::fs::read(&path).expect("read");
        for i in 0..size {
            let mut bad = good.clone();
            bad[i] ^= 0x5a;
            std::fs::write(&path, &bad).expect("write");
            let r = IndexReader::open(&path).and_then(|ix| {
                ix.verify()?;
                ix.series(0, Some(&mut Vec::new())).map(|_| ())
            });
            assert!(r.is_err(), "flipped byte {i} went unnoticed");
        }
    }
}
