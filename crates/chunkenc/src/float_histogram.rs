//! Float histogram chunks (Prometheus's encoding 3, `tsdb/chunkenc/float_histogram.go`).
//!
//! Same header and layout as integer histogram chunks ([`crate::HistogramAppender`]);
//! samples: sample 0 is t varbit then count, zero count, sum and each (absolute) bucket as
//! 64 raw bits; later samples are the t delta-of-delta varbit, then each of those values
//! XOR-encoded against its own previous value with its own window.

use m3query_model::histogram::{CounterResetHint, FloatHistogram, Span};
use m3query_model::{STALE_NAN_BITS, is_stale_nan};

use crate::bstream::{BitReader, BitWriter};
use crate::histogram::{
    CounterResetHeader, Fit, HEADER_SIZE, HistogramAppend, Last, Next, check_layout, count_spans,
    fit_counter, fit_gauge, read_header, sample_spans, set_header, span_indices, widen, xor_read,
};
use crate::varbit::{Layout, put_varbit_int, read_varbit_int};
use crate::xor::XorWindow;
use crate::{ChunkError, Result};

/// One XOR-encoded value and its window.
#[derive(Clone, Copy, Debug, Default)]
struct XorVal {
    bits: u64,
    window: XorWindow,
    /// The decoder's view of the window.
    leading: u8,
    trailing: u8,
}

impl XorVal {
    fn write(&mut self, w: &mut BitWriter, v: f64) {
        self.window.write(w, v.to_bits() ^ self.bits);
        self.bits = v.to_bits();
    }

    fn read(&mut self, r: &mut BitReader<'_>) -> Option<()> {
        xor_read(r, &mut self.bits, &mut self.leading, &mut self.trailing)
    }

    fn value(&self) -> f64 {
        f64::from_bits(self.bits)
    }

    /// The writer continuing where a decoder stopped (Prometheus copies the decoder's
    /// leading/trailing, which start at 0, not at "no window yet").
    fn resumed(&self) -> Self {
        XorVal {
            window: XorWindow::from_parts(self.leading, self.trailing),
            ..*self
        }
    }
}

#[derive(Clone, Debug, Default)]
struct FloatState {
    layout: Layout,
    t: i64,
    t_delta: i64,
    cnt: XorVal,
    zcnt: XorVal,
    sum: XorVal,
    pos: Vec<XorVal>,
    neg: Vec<XorVal>,
}

/// Builds one float histogram chunk (encoding 3), byte for byte as Prometheus's
/// `FloatHistogramAppender`.
#[derive(Clone, Debug)]
pub struct FloatHistogramAppender {
    w: BitWriter,
    num: u16,
    s: FloatState,
}

impl Default for FloatHistogramAppender {
    fn default() -> Self {
        Self::new()
    }
}

impl FloatHistogramAppender {
    /// An empty chunk.
    pub fn new() -> Self {
        FloatHistogramAppender {
            w: BitWriter {
                buf: vec![0; HEADER_SIZE],
                free: 0,
            },
            num: 0,
            s: FloatState::default(),
        }
    }

    /// An appender continuing the chunk `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut it = FloatHistogramIterator::new(bytes)?;
        while it.advance()? {}
        if it.r.remaining_bits() >= 8 {
            return Err(ChunkError::Corrupt("bytes after the chunk's last sample"));
        }
        let used = it.data_len * 8 - it.r.remaining_bits();
        let free = ((8 - used % 8) % 8) as u8;
        let mut s = it.s;
        if it.num_read > 0 {
            s.cnt = s.cnt.resumed();
            s.zcnt = s.zcnt.resumed();
            s.sum = s.sum.resumed();
            s.pos.iter_mut().for_each(|v| *v = v.resumed());
            s.neg.iter_mut().for_each(|v| *v = v.resumed());
        }
        Ok(FloatHistogramAppender {
            w: BitWriter {
                buf: bytes.to_vec(),
                free,
            },
            num: it.total,
            s,
        })
    }

    /// The chunk: header and bit stream.
    pub fn bytes(&self) -> &[u8] {
        &self.w.buf
    }

    /// Samples in the chunk.
    pub fn num_samples(&self) -> u16 {
        self.num
    }

    /// The chunk's counter reset header.
    pub fn counter_reset_header(&self) -> CounterResetHeader {
        CounterResetHeader::from_flags(self.w.buf[2])
    }

    /// Sets the counter reset header.
    pub fn set_counter_reset_header(&mut self, h: CounterResetHeader) {
        set_header(&mut self.w.buf, self.num, h);
    }

    /// Timestamp of the last sample (meaningless while empty).
    pub fn last_t(&self) -> i64 {
        self.s.t
    }

    /// Appends `h` at `t` as Prometheus's `AppendFloatHistogram` (not append-only); see
    /// [`HistogramAppend`]. Errors only when `h`'s spans and buckets disagree.
    pub fn append(&mut self, t: i64, h: &FloatHistogram) -> Result<HistogramAppend<Self>> {
        self.append_after(None, t, h)
    }

    /// As [`FloatHistogramAppender::append`], deciding a new chunk's counter reset header
    /// against `prev`, the series' previous chunk.
    pub fn append_after(
        &mut self,
        prev: Option<&FloatHistogramAppender>,
        t: i64,
        h: &FloatHistogram,
    ) -> Result<HistogramAppend<Self>> {
        use CounterResetHeader as H;
        check_layout(
            &h.positive_spans,
            h.positive_buckets.len(),
            &h.negative_spans,
            h.negative_buckets.len(),
        )?;
        if self.num == 0 {
            self.write_sample(t, h);
            let header = match h.counter_reset_hint {
                CounterResetHint::Gauge => H::Gauge,
                CounterResetHint::CounterReset => H::CounterReset,
                _ => match prev {
                    // Float chunks only tell reset from no reset here (Prometheus).
                    Some(p) => match p.fit(h) {
                        Fit::Cut(H::CounterReset) => H::CounterReset,
                        _ => H::NotCounterReset,
                    },
                    None => self.counter_reset_header(),
                },
            };
            set_header(&mut self.w.buf, self.num, header);
            return Ok(HistogramAppend::Appended);
        }
        let gauge = h.counter_reset_hint == CounterResetHint::Gauge;
        let fit = self.fit(h);
        if self.num == u16::MAX {
            let header = match fit {
                Fit::Cut(hd) => hd,
                Fit::Ok { .. } if gauge => H::Gauge,
                Fit::Ok { .. } => H::NotCounterReset,
            };
            return Ok(HistogramAppend::NewChunk(Box::new(self.cut(header, t, h))));
        }
        let (pos, neg) = match fit {
            Fit::Cut(header) => {
                return Ok(HistogramAppend::NewChunk(Box::new(self.cut(header, t, h))));
            }
            Fit::Ok { pos, neg } => (pos, neg),
        };
        let (p_spans, n_spans) = sample_spans(
            gauge,
            &self.s.layout,
            &h.positive_spans,
            &h.negative_spans,
            &pos,
            &neg,
        );
        let mut h2;
        let mut h = h;
        if pos.backward || neg.backward {
            h2 = h.clone();
            h2.positive_buckets = widen(
                &span_indices(&h.positive_spans),
                &h.positive_buckets,
                &span_indices(&p_spans),
            );
            h2.negative_buckets = widen(
                &span_indices(&h.negative_spans),
                &h.negative_buckets,
                &span_indices(&n_spans),
            );
            h2.positive_spans = p_spans;
            h2.negative_spans = n_spans;
            h = &h2;
        }
        if pos.forward || neg.forward {
            let mut fresh = self.recode(&h.positive_spans, &h.negative_spans)?;
            fresh.write_sample(t, h);
            *self = fresh;
            return Ok(HistogramAppend::Recoded);
        }
        self.write_sample(t, h);
        Ok(HistogramAppend::Appended)
    }

    fn fit(&self, h: &FloatHistogram) -> Fit {
        let a_pos: Vec<f64> = self.s.pos.iter().map(XorVal::value).collect();
        let a_neg: Vec<f64> = self.s.neg.iter().map(XorVal::value).collect();
        let last = Last {
            num: self.num,
            header: self.counter_reset_header(),
            layout: &self.s.layout,
            count: self.s.cnt.value(),
            zero_count: self.s.zcnt.value(),
            sum: self.s.sum.value(),
            pos: &a_pos,
            neg: &a_neg,
        };
        let next = Next {
            hint: h.counter_reset_hint,
            schema: h.schema,
            zero_threshold: h.zero_threshold,
            custom_values: &h.custom_values,
            count: h.count,
            zero_count: h.zero_count,
            sum: h.sum,
            pos_spans: &h.positive_spans,
            neg_spans: &h.negative_spans,
            pos: &h.positive_buckets,
            neg: &h.negative_buckets,
        };
        if h.counter_reset_hint == CounterResetHint::Gauge {
            fit_gauge(&last, &next)
        } else {
            fit_counter(&last, &next, CounterResetHeader::Unknown)
        }
    }

    fn cut(&self, header: CounterResetHeader, t: i64, h: &FloatHistogram) -> Self {
        let mut a = FloatHistogramAppender::new();
        set_header(&mut a.w.buf, 0, header);
        a.write_sample(t, h);
        a
    }

    fn recode(&self, pos: &[Span], neg: &[Span]) -> Result<Self> {
        let mut it = FloatHistogramIterator::new(self.bytes())?;
        let mut fresh = FloatHistogramAppender::new();
        set_header(&mut fresh.w.buf, 0, self.counter_reset_header());
        let (to_p, to_n) = (span_indices(pos), span_indices(neg));
        while let Some((t, mut old)) = it.next_raw()? {
            if !is_stale_nan(old.sum) {
                old.positive_buckets = widen(
                    &span_indices(&old.positive_spans),
                    &old.positive_buckets,
                    &to_p,
                );
                old.negative_buckets = widen(
                    &span_indices(&old.negative_spans),
                    &old.negative_buckets,
                    &to_n,
                );
                old.positive_spans = pos.to_vec();
                old.negative_spans = neg.to_vec();
            }
            fresh.write_sample(t, &old);
        }
        Ok(fresh)
    }

    /// Prometheus's `appendFloatHistogram`: writes the sample with no checks.
    fn write_sample(&mut self, t: i64, h: &FloatHistogram) {
        let stale_h;
        let h = if is_stale_nan(h.sum) {
            stale_h = FloatHistogram {
                sum: h.sum,
                ..Default::default()
            };
            &stale_h
        } else {
            h
        };
        let w = &mut self.w;
        let s = &mut self.s;
        let mut t_delta = 0i64;
        if self.num == 0 {
            s.layout = Layout {
                schema: h.schema,
                zero_threshold: h.zero_threshold,
                positive_spans: h.positive_spans.clone(),
                negative_spans: h.negative_spans.clone(),
                custom_values: h.custom_values.clone(),
            };
            s.layout.write(w);
            let fresh = |v: &f64| XorVal {
                bits: v.to_bits(),
                ..Default::default()
            };
            let np = count_spans(&h.positive_spans);
            let nn = count_spans(&h.negative_spans);
            s.pos = h.positive_buckets.iter().take(np).map(fresh).collect();
            s.neg = h.negative_buckets.iter().take(nn).map(fresh).collect();
            put_varbit_int(w, t);
            for v in [h.count, h.zero_count, h.sum] {
                w.write_bits(v.to_bits(), 64);
            }
            s.cnt = fresh(&h.count);
            s.zcnt = fresh(&h.zero_count);
            s.sum = fresh(&h.sum);
            for b in h.positive_buckets.iter().chain(&h.negative_buckets) {
                w.write_bits(b.to_bits(), 64);
            }
        } else {
            t_delta = t.wrapping_sub(s.t);
            put_varbit_int(w, t_delta.wrapping_sub(s.t_delta));
            s.cnt.write(w, h.count);
            s.zcnt.write(w, h.zero_count);
            s.sum.write(w, h.sum);
            for (v, &b) in s.pos.iter_mut().zip(&h.positive_buckets) {
                v.write(w, b);
            }
            for (v, &b) in s.neg.iter_mut().zip(&h.negative_buckets) {
                v.write(w, b);
            }
        }
        s.t = t;
        s.t_delta = t_delta;
        self.num += 1;
        let crh = CounterResetHeader::from_flags(self.w.buf[2]);
        set_header(&mut self.w.buf, self.num, crh);
    }
}

/// Decodes a float histogram chunk. Errors on bytes that cannot be a chunk; never panics.
#[derive(Clone, Debug)]
pub struct FloatHistogramIterator<'a> {
    r: BitReader<'a>,
    data_len: usize,
    total: u16,
    num_read: u16,
    header: CounterResetHeader,
    s: FloatState,
}

impl<'a> FloatHistogramIterator<'a> {
    /// An iterator over a chunk (`bytes` includes the 3-byte header).
    pub fn new(bytes: &'a [u8]) -> Result<Self> {
        let (total, header) = read_header(bytes)?;
        Ok(FloatHistogramIterator {
            r: BitReader::new(&bytes[HEADER_SIZE..]),
            data_len: bytes.len() - HEADER_SIZE,
            total,
            num_read: 0,
            header,
            s: FloatState::default(),
        })
    }

    /// Samples in the chunk, per its header.
    pub fn num_samples(&self) -> u16 {
        self.total
    }

    /// The chunk's counter reset header.
    pub fn counter_reset_header(&self) -> CounterResetHeader {
        self.header
    }

    /// The next sample as Prometheus's `AtFloatHistogram` returns it (schemas above 8
    /// reduced to 8, stale samples as only their sum, hint from header and position).
    pub fn next_histogram(&mut self) -> Result<Option<(i64, FloatHistogram)>> {
        let Some((t, mut h)) = self.next_raw()? else {
            return Ok(None);
        };
        if is_stale_nan(h.sum) {
            return Ok(Some((t, h)));
        }
        h.counter_reset_hint = self.header.sample_hint(self.num_read);
        if h.schema > m3query_model::histogram::EXPONENTIAL_SCHEMA_MAX {
            h.reduce_resolution(m3query_model::histogram::EXPONENTIAL_SCHEMA_MAX)
                .map_err(|_| ChunkError::Corrupt("histogram schema cannot be reduced"))?;
        }
        Ok(Some((t, h)))
    }

    fn next_raw(&mut self) -> Result<Option<(i64, FloatHistogram)>> {
        if !self.advance()? {
            return Ok(None);
        }
        let s = &self.s;
        if is_stale_nan(s.sum.value()) {
            return Ok(Some((
                s.t,
                FloatHistogram {
                    sum: f64::from_bits(STALE_NAN_BITS),
                    ..Default::default()
                },
            )));
        }
        Ok(Some((
            s.t,
            FloatHistogram {
                counter_reset_hint: CounterResetHint::Unknown,
                schema: s.layout.schema,
                zero_threshold: s.layout.zero_threshold,
                zero_count: s.zcnt.value(),
                count: s.cnt.value(),
                sum: s.sum.value(),
                positive_spans: s.layout.positive_spans.clone(),
                negative_spans: s.layout.negative_spans.clone(),
                positive_buckets: s.pos.iter().map(XorVal::value).collect(),
                negative_buckets: s.neg.iter().map(XorVal::value).collect(),
                custom_values: s.layout.custom_values.clone(),
            },
        )))
    }

    fn advance(&mut self) -> Result<bool> {
        if self.num_read == self.total {
            return Ok(false);
        }
        let r = &mut self.r;
        let s = &mut self.s;
        let ok = if self.num_read == 0 {
            s.layout = Layout::read(r)?;
            let np = count_spans(&s.layout.positive_spans);
            let nn = count_spans(&s.layout.negative_spans);
            if np.saturating_add(nn).saturating_mul(64) > r.remaining_bits() {
                return Err(ChunkError::Corrupt(
                    "histogram chunk has more buckets than data",
                ));
            }
            (|| {
                s.t = read_varbit_int(r)?;
                let raw = |r: &mut BitReader<'_>| {
                    r.read_bits_wide(64).map(|bits| XorVal {
                        bits,
                        ..Default::default()
                    })
                };
                s.cnt = raw(r)?;
                s.zcnt = raw(r)?;
                s.sum = raw(r)?;
                s.pos = (0..np).map(|_| raw(r)).collect::<Option<_>>()?;
                s.neg = (0..nn).map(|_| raw(r)).collect::<Option<_>>()?;
                Some(())
            })()
        } else {
            (|| {
                let dod = read_varbit_int(r)?;
                s.t_delta = s.t_delta.wrapping_add(dod);
                s.t = s.t.wrapping_add(s.t_delta);
                s.cnt.read(r)?;
                s.zcnt.read(r)?;
                s.sum.read(r)?;
                if is_stale_nan(s.sum.value()) {
                    return Some(());
                }
                for v in s.pos.iter_mut().chain(s.neg.iter_mut()) {
                    v.read(r)?;
                }
                Some(())
            })()
        };
        if ok.is_none() {
            return Err(ChunkError::Truncated {
                read: self.num_read,
                total: self.total,
            });
        }
        self.num_read += 1;
        Ok(true)
    }
}
