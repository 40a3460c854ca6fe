//! Reads: a querier over the head and every block overlapping its range.
//!
//! `select` resolves postings in each source, gathers each matching series' chunks (shared
//! `Arc`s and mmapped slices; only the head's open chunk is copied), merges the sources by
//! labels and hands out series that decode lazily. Sample iterators skip whole chunks outside
//! the requested range by their min/max time and decode the rest in the codec's tight loop.

use std::cmp::Ordering;
use std::sync::Arc;

use m3query_chunkenc::ChunkIterator;
use m3query_model::{Labels, Matcher, Sample};
use m3query_storage::{
    Context, Error as StorageError, HistogramSample, LabelHints, LabelValues, Querier,
    Result as SResult, SampleIterator, SelectHints, Series, SeriesSet, VecSeriesSet, Warnings,
    matchers_select_something,
};

use crate::Result;
use crate::block::Block;
use crate::chunks::{QChunk, merge_chunks};
use crate::hist::{decode_chunks, for_each_in_chunk, is_hist_encoding, to_sample};
use crate::index::{ChunkMeta, IndexReader};
use crate::matchers::{PostingsIndex, postings_for_matchers};
use crate::postings::intersect;
use crate::readers::Snapshot;

/// How often long loops poll the query context.
const CHECK_EVERY: usize = 1024;

/// Reads `[mint, maxt]` of one snapshot: every select of a query sees the same blocks.
pub(crate) struct DbQuerier<'a> {
    pub(crate) view: Snapshot<'a>,
    pub(crate) mint: i64,
    pub(crate) maxt: i64,
}

/// One source's view of a series: its labels and its chunks in the querier's range.
struct Part {
    labels: PartLabels,
    chunks: Vec<QChunk>,
}

/// A head series carries its (interned) label set; a block series only the symbol
/// references of its index entry, so merging sources builds a label set for a block series
/// only when no newer source has one.
enum PartLabels {
    Head(Labels),
    /// `refs[lo..hi]` of the block's source.
    Block {
        lo: usize,
        hi: usize,
    },
}

/// The parts of one source, in label order.
struct Source<'a> {
    parts: std::vec::IntoIter<Part>,
    /// Symbol references of the block parts' labels.
    refs: Vec<(u32, u32)>,
    index: Option<&'a IndexReader>,
}

/// A part's labels as (name, value) strings.
enum Pairs<'a> {
    Head(std::slice::Iter<'a, m3query_model::Label>),
    Block(&'a IndexReader, std::slice::Iter<'a, (u32, u32)>),
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a str, &'a str);
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Pairs::Head(it) => it.next().map(|l| (&*l.name, &*l.value)),
            Pairs::Block(ix, it) => it
                .next()
                .map(|&(n, v)| (ix.symbol_str(n), ix.symbol_str(v))),
        }
    }
}

impl Source<'_> {
    fn pairs<'s>(&'s self, p: &'s Part) -> Pairs<'s> {
        match (&p.labels, self.index) {
            (PartLabels::Head(l), _) => Pairs::Head(l.iter()),
            (PartLabels::Block { lo, hi }, Some(ix)) => {
                Pairs::Block(ix, self.refs.get(*lo..*hi).unwrap_or(&[]).iter())
            }
            (PartLabels::Block { .. }, None) => Pairs::Head([].iter()),
        }
    }

    fn labels(&self, p: &Part) -> Labels {
        match (&p.labels, self.index) {
            (PartLabels::Head(l), _) => l.clone(),
            (PartLabels::Block { lo, hi }, Some(ix)) => {
                ix.labels_from_refs(self.refs.get(*lo..*hi).unwrap_or(&[]))
            }
            (PartLabels::Block { .. }, None) => Labels::empty(),
        }
    }
}

/// Orders interned label sets (the head's): equal strings are one allocation, so most
/// comparisons end at a pointer check instead of comparing bytes.
fn cmp_interned(a: &Labels, b: &Labels) -> Ordering {
    for (x, y) in a.iter().zip(b.iter()) {
        if !std::sync::Arc::ptr_eq(&x.name, &y.name) {
            match x.name.cmp(&y.name) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        if !std::sync::Arc::ptr_eq(&x.value, &y.value) {
            match x.value.cmp(&y.value) {
                Ordering::Equal => {}
                o => return o,
            }
        }
    }
    a.len().cmp(&b.len())
}

fn chunk_overlaps(m: &ChunkMeta, mint: i64, maxt: i64) -> bool {
    m.max_t >= mint && m.min_t <= maxt
}

impl DbQuerier<'_> {
    /// The head's matching series with chunks in range: ordered by labels with `sort`, else
    /// in the head's series order (as Prometheus's head answers an unsorted select).
    fn head_source(
        &self,
        ctx: &Context,
        matchers: &[Matcher],
        sort: bool,
    ) -> Result<Source<'static>> {
        let head = self.view.head;
        let refs = {
            let p = head.postings.read();
            postings_for_matchers(&*p, matchers)?
        };
        let mut out = Vec::with_capacity(refs.len());
        for (i, r) in refs.iter().enumerate() {
            if i % CHECK_EVERY == CHECK_EVERY - 1 {
                ctx.check()?;
            }
            let Some(s) = head.series(*r) else { continue };
            let mut cs = Vec::new();
            s.data.lock().chunks(self.mint, self.maxt, &mut cs);
            if !cs.is_empty() {
                out.push(Part {
                    labels: PartLabels::Head(s.labels.clone()),
                    chunks: cs,
                });
            }
        }
        if sort {
            out.sort_unstable_by(|a, b| match (&a.labels, &b.labels) {
                (PartLabels::Head(x), PartLabels::Head(y)) => cmp_interned(x, y),
                _ => Ordering::Equal,
            });
        }
        Ok(Source {
            parts: out.into_iter(),
            refs: Vec::new(),
            index: None,
        })
    }

    fn block_source<'b>(
        &self,
        ctx: &Context,
        b: &'b Block,
        matchers: &[Matcher],
        warnings: &mut Warnings,
    ) -> Result<Source<'b>> {
        let ids = postings_for_matchers(&b.index, matchers)?;
        let mut out = Vec::with_capacity(ids.len());
        let mut refs = Vec::with_capacity(ids.len() * 8);
        let mut metas = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            if i % CHECK_EVERY == CHECK_EVERY - 1 {
                ctx.check()?;
            }
            metas.clear();
            let lo = refs.len();
            b.index.series_refs(*id, &mut refs, Some(&mut metas))?;
            let mut cs = Vec::new();
            for m in metas
                .iter()
                .filter(|m| chunk_overlaps(m, self.mint, self.maxt))
            {
                let (enc, bytes) = match b.chunks.chunk(m.r) {
                    Ok(c) => c,
                    Err(e @ crate::Error::Corruption { .. }) => {
                        // A wrong value must never be served: leave the chunk out and say so.
                        self.view.health.mark_corrupt(b, "chunk_checksum", &e);
                        warnings.push(damaged_warning(b, &e));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                cs.push(QChunk {
                    seek: None,
                    min_t: m.min_t,
                    max_t: m.max_t,
                    enc,
                    bytes,
                });
            }
            if cs.is_empty() {
                refs.truncate(lo);
            } else {
                out.push(Part {
                    labels: PartLabels::Block { lo, hi: refs.len() },
                    chunks: cs,
                });
            }
        }
        Ok(Source {
            parts: out.into_iter(),
            refs,
            index: Some(&b.index),
        })
    }

    fn select_inner(
        &self,
        ctx: &Context,
        sort: bool,
        hints: &SelectHints,
        matchers: &[Matcher],
        warnings: &mut Warnings,
    ) -> Result<Vec<TsdbSeries>> {
        let blocks = &self.view.blocks;
        let overlapping = || blocks.iter().filter(|b| b.overlaps(self.mint, self.maxt));
        // Merging sources needs each in label order; the head alone (an instant query's
        // window, usually) is sorted only when the caller asks, which saves an n log n
        // comparison of label sets per select.
        let head = self.head_source(ctx, matchers, sort || overlapping().next().is_some())?;
        self.view
            .health
            .unreadable_block_warnings(self.mint, self.maxt, warnings);
        // Sources in precedence order for equal timestamps: older blocks first, head last.
        let mut sources: Vec<Source<'_>> = Vec::new();
        for b in overlapping() {
            match self.block_source(ctx, b, matchers, warnings) {
                Ok(s) => sources.push(s),
                Err(e @ crate::Error::Corruption { .. }) => {
                    // A damaged index entry or postings list: the block's answer cannot be
                    // trusted, so it is left out, with a warning.
                    self.view.health.mark_corrupt(b, "index", &e);
                    warnings.push(damaged_warning(b, &e));
                }
                Err(e) => return Err(e),
            }
        }
        sources.push(head);
        let mut heads: Vec<Option<Part>> = sources.iter_mut().map(|s| s.parts.next()).collect();
        let mut out = Vec::new();
        // Sources holding the current smallest label set.
        let mut group: Vec<usize> = Vec::with_capacity(sources.len());
        loop {
            group.clear();
            for i in 0..heads.len() {
                let Some(p) = heads[i].as_ref() else { continue };
                let Some(&m) = group.first() else {
                    group.push(i);
                    continue;
                };
                let Some(mp) = heads[m].as_ref() else {
                    continue;
                };
                match sources[i].pairs(p).cmp(sources[m].pairs(mp)) {
                    Ordering::Less => {
                        group.clear();
                        group.push(i);
                    }
                    Ordering::Equal => group.push(i),
                    Ordering::Greater => {}
                }
            }
            if group.is_empty() {
                break;
            }
            // The label set from the newest source that has it built (the head), else
            // built once from a block's references.
            let labels = {
                let newest = group
                    .iter()
                    .rev()
                    .copied()
                    .find(|&i| {
                        matches!(
                            heads[i],
                            Some(Part {
                                labels: PartLabels::Head(_),
                                ..
                            })
                        )
                    })
                    .unwrap_or(group[0]);
                match heads[newest].as_ref() {
                    Some(p) => sources[newest].labels(p),
                    None => break,
                }
            };
            let mut chunks = Vec::new();
            for &i in &group {
                if let Some(p) = heads[i].take() {
                    if chunks.is_empty() {
                        chunks = p.chunks;
                    } else {
                        chunks.extend(p.chunks);
                    }
                }
                heads[i] = sources[i].parts.next();
            }
            if out.len() % CHECK_EVERY == CHECK_EVERY - 1 {
                ctx.check()?;
            }
            if !has_samples_in(&chunks, self.mint, self.maxt)? {
                continue;
            }
            out.push(TsdbSeries::new(labels, chunks, self.mint, self.maxt));
            if hints.limit > 0 && out.len() >= hints.limit {
                break;
            }
        }
        Ok(out)
    }

    /// Label values (or, with `name` None, label names) per source, merged.
    fn label_strings(
        &self,
        ctx: &Context,
        name: Option<&str>,
        matchers: &[Matcher],
        warnings: &mut Warnings,
    ) -> Result<Vec<String>> {
        let mut all: Vec<Arc<str>> = Vec::new();
        let head = self.view.head;
        // As Prometheus: the head answers when its time range overlaps the query's.
        if head.max_time() >= self.mint && head.min_time() <= self.maxt {
            let p = head.postings.read();
            all.extend(collect_labels(
                ctx,
                &*p,
                name,
                matchers,
                |r| Ok(head.series(r).map(|s| s.labels.clone())),
                || Ok(p.label_names()),
            )?);
        }
        for b in self
            .view
            .blocks
            .iter()
            .filter(|b| b.overlaps(self.mint, self.maxt))
        {
            let ix = &b.index;
            match collect_labels(
                ctx,
                ix,
                name,
                matchers,
                |id| ix.series(id, None).map(Some),
                || Ok(ix.label_names().to_vec()),
            ) {
                Ok(v) => all.extend(v),
                Err(e @ crate::Error::Corruption { .. }) => {
                    self.view.health.mark_corrupt(b, "index", &e);
                    warnings.push(damaged_warning(b, &e));
                }
                Err(e) => return Err(e),
            }
        }
        self.view
            .health
            .unreadable_block_warnings(self.mint, self.maxt, warnings);
        all.sort();
        all.dedup();
        Ok(all.iter().map(|s| s.to_string()).collect())
    }
}

/// The warning for data of block `b` left out of a result because `e` found it damaged.
fn damaged_warning(b: &Block, e: &crate::Error) -> String {
    format!(
        "tsdb block {} is damaged ({e}): its data there is missing from this result",
        b.meta.ulid
    )
}

/// Whether any chunk holds a sample in `[mint, maxt]`. A chunk's first and last samples are
/// at its min and max times, so a chunk with either inside the range does; only chunks that
/// start before the range and end after it are decoded, up to their first sample at or after
/// `mint`. (An instant query's window holds the open head chunk's last sample: it used to be
/// decoded here once, then again for the query.)
fn has_samples_in(chunks: &[QChunk], mint: i64, maxt: i64) -> Result<bool> {
    let inside = |t: i64| t >= mint && t <= maxt;
    if chunks.iter().any(|c| inside(c.min_t) || inside(c.max_t)) {
        return Ok(true);
    }
    for c in chunks.iter().filter(|c| c.min_t < mint && c.max_t > maxt) {
        if is_hist_encoding(c.enc) {
            let mut found = false;
            for_each_in_chunk(c.enc, c.bytes.as_slice(), |t, _| {
                found = t >= mint && t <= maxt;
                t < mint
            })?;
            if found {
                return Ok(true);
            }
            continue;
        }
        if let Some((t, _)) = c.iter()?.next_from(mint)?
            && t <= maxt
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Values of `name` (or label names when `None`) among series matching `matchers` in one
/// index. With matchers and few values relative to matching series, tests each value's
/// postings against the matches instead of reading every series' labels.
fn collect_labels<I: PostingsIndex>(
    ctx: &Context,
    ix: &I,
    name: Option<&str>,
    matchers: &[Matcher],
    labels_of: impl Fn(I::Ref) -> Result<Option<Labels>>,
    names: impl Fn() -> Result<Vec<Arc<str>>>,
) -> Result<Vec<Arc<str>>> {
    if matchers.is_empty() {
        return match name {
            Some(n) => ix.label_values(n),
            None => names(),
        };
    }
    let refs = postings_for_matchers(ix, matchers)?;
    if refs.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(n) = name {
        let values = ix.label_values(n)?;
        if values.len() * 8 < refs.len() {
            let mut out = Vec::new();
            for (i, v) in values.into_iter().enumerate() {
                if i % CHECK_EVERY == CHECK_EVERY - 1 {
                    ctx.check()?;
                }
                if !intersect(&ix.postings(n, &v)?, &refs).is_empty() {
                    out.push(v);
                }
            }
            return Ok(out);
        }
    }
    let mut out = Vec::new();
    for (i, r) in refs.into_iter().enumerate() {
        if i % CHECK_EVERY == CHECK_EVERY - 1 {
            ctx.check()?;
        }
        let Some(ls) = labels_of(r)? else { continue };
        match name {
            Some(n) => {
                if let Some(l) = ls.iter().find(|l| &*l.name == n) {
                    out.push(l.value.clone());
                }
            }
            None => out.extend(ls.iter().map(|l| l.name.clone())),
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

impl Querier for DbQuerier<'_> {
    fn select(
        &self,
        ctx: &Context,
        sort: bool,
        hints: &SelectHints,
        matchers: &[Matcher],
    ) -> SResult<Box<dyn SeriesSet + '_>> {
        ctx.check()?;
        if !matchers_select_something(matchers) {
            return Err(StorageError::BadRequest(
                "vector selector must contain at least one non-empty matcher".into(),
            ));
        }
        let mut warnings = Warnings::new();
        let series = self.select_inner(ctx, sort, hints, matchers, &mut warnings)?;
        if !series.is_empty() {
            self.view.mark_selected();
        }
        Ok(Box::new(VecSeriesSet::new(series, warnings)))
    }

    fn label_values(
        &self,
        ctx: &Context,
        name: &str,
        hints: &LabelHints,
        matchers: &[Matcher],
    ) -> SResult<LabelValues> {
        ctx.check()?;
        let mut w = Warnings::new();
        let values = self.label_strings(ctx, Some(name), matchers, &mut w)?;
        Ok(LabelValues::limited(values, hints.limit, w))
    }

    fn label_names(
        &self,
        ctx: &Context,
        hints: &LabelHints,
        matchers: &[Matcher],
    ) -> SResult<LabelValues> {
        ctx.check()?;
        let mut w = Warnings::new();
        let values = self.label_strings(ctx, None, matchers, &mut w)?;
        Ok(LabelValues::limited(values, hints.limit, w))
    }
}

/// A series from the TSDB: labels and chunks (from one or more sources) that decode on
/// demand within the querier's range.
pub(crate) struct TsdbSeries {
    labels: Labels,
    chunks: Vec<QChunk>,
    /// Native histogram chunks, apart from the floats' (usually none: boxed, so float
    /// series stay as small as they were).
    hchunks: Option<Box<[QChunk]>>,
    mint: i64,
    maxt: i64,
    /// Chunks overlap in time (several sources, or out-of-order data): merge by timestamp.
    overlapping: bool,
}

impl TsdbSeries {
    fn new(labels: Labels, mut chunks: Vec<QChunk>, mint: i64, maxt: i64) -> Self {
        let hchunks = if chunks.iter().any(|c| is_hist_encoding(c.enc)) {
            let (h, f): (Vec<QChunk>, Vec<QChunk>) =
                chunks.into_iter().partition(|c| is_hist_encoding(c.enc));
            chunks = f;
            Some(h.into_boxed_slice())
        } else {
            None
        };
        // Stable, so chunks keep source precedence when they start at the same time.
        let sorted = chunks.windows(2).all(|w| w[0].max_t < w[1].min_t);
        let overlapping = if sorted {
            false
        } else {
            let mut c = chunks.clone();
            c.sort_by_key(|c| c.min_t);
            let ov = !c.windows(2).all(|w| w[0].max_t < w[1].min_t);
            if !ov {
                chunks = c;
            }
            ov
        };
        TsdbSeries {
            labels,
            chunks,
            hchunks,
            mint,
            maxt,
            overlapping,
        }
    }
}

impl Series for TsdbSeries {
    fn labels(&self) -> &Labels {
        &self.labels
    }

    fn iter(&self) -> Box<dyn SampleIterator + '_> {
        let hists = HistStream {
            chunks: self.hchunks.as_deref().unwrap_or(&[]),
            mint: self.mint,
            maxt: self.maxt,
            samples: None,
            pos: 0,
        };
        if self.overlapping {
            return Box::new(MergedIter {
                src: Some((&self.chunks, self.mint, self.maxt)),
                samples: Vec::new(),
                pos: 0,
                hists,
            });
        }
        Box::new(ChunksIter {
            chunks: &self.chunks,
            idx: 0,
            cur: None,
            mint: self.mint,
            maxt: self.maxt,
            done: false,
            hists,
        })
    }
}

fn cerr(e: impl Into<crate::Error>) -> StorageError {
    e.into().into()
}

/// Iterates non-overlapping chunks in time order.
struct ChunksIter<'a> {
    chunks: &'a [QChunk],
    idx: usize,
    cur: Option<ChunkIterator<'a>>,
    mint: i64,
    maxt: i64,
    done: bool,
    hists: HistStream<'a>,
}

/// A series' histogram samples within the querier's range, decoded on first use (a
/// histogram is far bigger than its chunk's per-sample cost, so there is little to gain
/// from skipping within chunks). Consumed as [`SampleIterator::append_histograms`] says.
struct HistStream<'a> {
    chunks: &'a [QChunk],
    mint: i64,
    maxt: i64,
    samples: Option<Vec<HistogramSample>>,
    pos: usize,
}

impl HistStream<'_> {
    fn append(&mut self, mint: i64, maxt: i64, out: &mut Vec<HistogramSample>) -> SResult<()> {
        if self.chunks.is_empty() {
            return Ok(());
        }
        let all = match &mut self.samples {
            Some(s) => s,
            None => {
                let decoded = decode_chunks(self.chunks, self.mint, self.maxt).map_err(cerr)?;
                self.samples
                    .insert(decoded.iter().map(|(t, h)| to_sample(*t, h)).collect())
            }
        };
        let rest = all.get(self.pos..).unwrap_or_default();
        let lo = rest.partition_point(|s| s.t < mint);
        let hi = rest.partition_point(|s| s.t <= maxt);
        if lo < hi {
            out.extend_from_slice(&rest[lo..hi]);
        }
        self.pos += hi;
        Ok(())
    }
}

impl ChunksIter<'_> {
    fn open_next(&mut self) -> SResult<bool> {
        let Some(c) = self.chunks.get(self.idx) else {
            return Ok(false);
        };
        self.idx += 1;
        self.cur = Some(c.iter().map_err(cerr)?);
        Ok(true)
    }
}

impl SampleIterator for ChunksIter<'_> {
    fn next(&mut self) -> SResult<Option<Sample>> {
        loop {
            if self.done {
                return Ok(None);
            }
            let next = match self.cur.as_mut() {
                Some(it) => it.next_sample(),
                None => {
                    if !self.open_next()? {
                        self.done = true;
                        continue;
                    }
                    // A fresh chunk: step over its samples before the range at once.
                    match self.cur.as_mut() {
                        Some(it) => it.next_from(self.mint),
                        None => continue,
                    }
                }
            };
            match next.map_err(cerr)? {
                Some((t, _)) if t < self.mint => {}
                Some((t, _)) if t > self.maxt => {
                    self.done = true;
                }
                Some((t, v)) => return Ok(Some(Sample { t, v })),
                None => self.cur = None,
            }
        }
    }

    fn append_range(&mut self, mint: i64, maxt: i64, out: &mut Vec<Sample>) -> SResult<()> {
        let lo = mint.max(self.mint);
        let hi = maxt.min(self.maxt);
        loop {
            if self.done {
                return Ok(());
            }
            if let Some(it) = self.cur.as_mut() {
                if it.append_range(lo, hi, out).map_err(cerr)? {
                    // Stopped past `hi`: past the querier's range there is nothing more.
                    if hi >= self.maxt {
                        self.done = true;
                    }
                    return Ok(());
                }
                self.cur = None;
                continue;
            }
            // Skip whole chunks that end before the range without decoding them.
            while self.chunks.get(self.idx).is_some_and(|c| c.max_t < lo) {
                self.idx += 1;
            }
            if !self.open_next()? {
                self.done = true;
            }
        }
    }

    fn append_histograms(
        &mut self,
        mint: i64,
        maxt: i64,
        out: &mut Vec<HistogramSample>,
    ) -> SResult<()> {
        self.hists.append(mint, maxt, out)
    }
}

/// Iterates overlapping chunks, merged and deduplicated on first use.
struct MergedIter<'a> {
    src: Option<(&'a [QChunk], i64, i64)>,
    samples: Vec<Sample>,
    pos: usize,
    hists: HistStream<'a>,
}

impl MergedIter<'_> {
    fn load(&mut self) -> SResult<()> {
        if let Some((chunks, mint, maxt)) = self.src.take() {
            self.samples = merge_chunks(chunks, mint, maxt).map_err(cerr)?;
        }
        Ok(())
    }
}

impl SampleIterator for MergedIter<'_> {
    fn next(&mut self) -> SResult<Option<Sample>> {
        self.load()?;
        let s = self.samples.get(self.pos).copied();
        self.pos += 1;
        Ok(s)
    }

    fn append_range(&mut self, mint: i64, maxt: i64, out: &mut Vec<Sample>) -> SResult<()> {
        self.load()?;
        let rest = self.samples.get(self.pos..).unwrap_or_default();
        let lo = rest.partition_point(|s| s.t < mint);
        let hi = rest.partition_point(|s| s.t <= maxt);
        if lo < hi {
            out.extend_from_slice(&rest[lo..hi]);
        }
        self.pos += (hi + 1).min(rest.len());
        Ok(())
    }

    fn append_histograms(
        &mut self,
        mint: i64,
        maxt: i64,
        out: &mut Vec<HistogramSample>,
    ) -> SResult<()> {
        self.hists.append(mint, maxt, out)
    }
}

#[cfg(test)]
mod tests {
    use m3query_model::{Labels, Matcher};
    use m3query_storage::{Appendable, Context, Queryable, SelectHints, collect_series};

    use crate::{Db, Options};

    const H: i64 = 3_600_000;

    fn instance(i: usize) -> Labels {
        Labels::from_pairs([("__name__", "up"), ("instance", &*format!("host-{i:02}"))])
    }

    fn instances(db: &Db, mint: i64, maxt: i64, sort: bool) -> Vec<String> {
        let q = db.querier(mint, maxt).expect("querier");
        let mut set = q
            .select(
                &Context::background(),
                sort,
                &SelectHints::default(),
                &[Matcher::equal("__name__", "up")],
            )
            .expect("select");
        let (series, _) = collect_series(set.as_mut(), mint, maxt).expect("read");
        series
            .iter()
            .map(|s| s.labels.get("instance").unwrap_or_default().to_string())
            .collect()
    }

    /// The head alone answers an unsorted select in its own series order (creation order
    /// here, the reverse of label order), without sorting, as Prometheus's head does; a
    /// sorted select, and any select that merges a block with the head, come in label order.
    #[test]
    fn unsorted_select_of_the_head_alone_skips_the_sort() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path(), Options::default()).expect("open");
        let end = 1_764_000_000_000i64;
        let start = end - 6 * H;
        let n = 12;
        let mut t = start;
        while t < end {
            let mut app = db.appender();
            for i in (0..n).rev() {
                app.append(&instance(i), t, 1.0).expect("append");
            }
            app.commit().expect("commit");
            t += 60_000;
        }
        db.run_maintenance().expect("maintenance");
        assert!(db.metrics().blocks >= 1, "older data cut into a block");
        let sorted: Vec<String> = (0..n).map(|i| format!("host-{i:02}")).collect();
        let created: Vec<String> = sorted.iter().rev().cloned().collect();
        // An instant query's window: the head only.
        let (lo, hi) = (end - 5 * 60_000, end);
        assert_eq!(instances(&db, lo, hi, false), created);
        assert_eq!(instances(&db, lo, hi, true), sorted);
        // The whole range: blocks and head merge, which needs (and gives) label order.
        assert_eq!(instances(&db, start, end, false), sorted);
        assert_eq!(instances(&db, start, end, true), sorted);
    }

    /// Small windows inside dense chunks (blocks' 480-sample ones and the head's sealed
    /// 120-sample ones), where the decoder steps over the samples before the window: the
    /// same samples through `append_range` and `next`, and a window between two samples
    /// selects no series.
    #[test]
    fn small_windows_inside_dense_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path(), Options::default()).expect("open");
        let end = 1_764_000_000_000i64;
        let start = end - 6 * H;
        let step = 10_000;
        let val = |t: i64| ((t - start) / step) as f64 * 0.25;
        let mut t = start;
        while t < end {
            let mut app = db.appender();
            app.append(&instance(0), t, val(t)).expect("append");
            app.commit().expect("commit");
            t += step;
        }
        db.run_maintenance().expect("maintenance");
        assert!(db.metrics().blocks >= 1, "older data cut into a block");
        let want = |lo: i64, hi: i64| -> Vec<(i64, f64)> {
            let first = start + (lo - start + step - 1).div_euclid(step) * step;
            (0..)
                .map(|i| first + i * step)
                .take_while(|&t| t <= hi && t < end)
                .filter(|&t| t >= start)
                .map(|t| (t, val(t)))
                .collect()
        };
        // From the oldest block to the open head chunk, at and between sample times.
        let mut at = start + 3 * step;
        while at < end {
            for (lo, hi) in [
                (at - 60_000, at),
                (at - 600_000 + 1, at + 1),
                (at + 1, at + 9_999),
            ] {
                let q = db.querier(lo, hi).expect("querier");
                let mut set = q
                    .select(
                        &Context::background(),
                        false,
                        &SelectHints::default(),
                        &[Matcher::equal("__name__", "up")],
                    )
                    .expect("select");
                let w = want(lo, hi);
                let mut seen = 0;
                while let Some(series) = set.next() {
                    let series = series.expect("series");
                    let mut by_range = Vec::new();
                    series
                        .iter()
                        .append_range(lo, hi, &mut by_range)
                        .expect("decode");
                    let mut by_next = Vec::new();
                    let mut it = series.iter();
                    while let Some(x) = it.next().expect("decode") {
                        by_next.push((x.t, x.v));
                    }
                    let by_range: Vec<(i64, f64)> = by_range.iter().map(|x| (x.t, x.v)).collect();
                    assert_eq!(by_range, w, "append_range in [{lo}, {hi}]");
                    assert_eq!(by_next, w, "next in [{lo}, {hi}]");
                    seen += 1;
                }
                assert_eq!(seen, usize::from(!w.is_empty()), "series in [{lo}, {hi}]");
            }
            at += 7 * 60_000 + 3_333;
        }
    }
}
