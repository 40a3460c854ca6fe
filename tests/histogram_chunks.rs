//! Byte compatibility of our native histogram chunk codec with a real Prometheus (Debian's
//! 2.42, `--enable-feature=native-histograms`): native histograms go in by remote write 1.0
//! (`TimeSeries.histograms`, encoded by `m3query_remote::histogram`), come back by remote read as `STREAMED_XOR_CHUNKS` (which
//! streams the head's chunks as they are, encoding `HISTOGRAM`), decode with our iterator to
//! what was sent, and our appender, fed the same samples, produces the same bytes. The same
//! for float histograms (`FLOAT_HISTOGRAM` chunks) and gauge histograms.

mod common;

use std::time::Duration;

use common::hist::samples;
use common::{Prometheus, eq_matcher, eventually, remote_read_streamed, send_snappy};
use m3query_chunkenc::{
    FloatHistogramAppender, FloatHistogramIterator, HistogramAppend, HistogramAppender,
    HistogramIterator,
};
use m3query_model::histogram::{CounterResetHint, FloatHistogram, Histogram};
use m3query_remote::histogram::v1::{float_to_proto, to_proto};
use m3query_remote::prompb;
use prost::Message;

/// Our encoding of `samples`, cutting chunks where our appender says.
fn encode(samples: &[(i64, Histogram)]) -> Vec<(i64, i64, Vec<u8>)> {
    let mut chunks = Vec::new();
    let mut app = HistogramAppender::new();
    let mut mint = samples[0].0;
    let mut maxt = mint;
    for (t, h) in samples {
        match app.append(*t, h).expect("append") {
            HistogramAppend::NewChunk(next) => {
                // The new chunk's counter reset header comes from comparing the sample with
                // the chunk it could not join, as in Prometheus's AppendHistogram.
                chunks.push((mint, maxt, app.bytes().to_vec()));
                app = *next;
                mint = *t;
            }
            HistogramAppend::Appended | HistogramAppend::Recoded => {}
        }
        maxt = *t;
    }
    chunks.push((mint, maxt, app.bytes().to_vec()));
    chunks
}

/// As `encode`, for float histograms.
fn encode_float(samples: &[(i64, FloatHistogram)]) -> Vec<(i64, i64, Vec<u8>)> {
    let mut chunks = Vec::new();
    let mut app = FloatHistogramAppender::new();
    let mut mint = samples[0].0;
    let mut maxt = mint;
    for (t, h) in samples {
        if let HistogramAppend::NewChunk(next) = app.append(*t, h).expect("append") {
            chunks.push((mint, maxt, app.bytes().to_vec()));
            app = *next;
            mint = *t;
        }
        maxt = *t;
    }
    chunks.push((mint, maxt, app.bytes().to_vec()));
    chunks
}

/// Our chunk `i` against Prometheus's. The last chunk is the open head chunk, which 2.42's
/// querier re-encodes before returning it and, since it cannot see through the head's chunk
/// wrapper, without its counter reset header (tsdb/querier.go at v2.42.0: the
/// `SetCounterResetHeader(hc.GetCounterResetHeader())` after a failing type assertion). So
/// there the header byte may also be 0 (unknown); every other byte must match.
fn assert_same_chunk(kind: &str, i: usize, last: bool, ours: &[u8], prom: &[u8]) {
    let mut ours_cmp = ours.to_vec();
    if last && prom.get(2) == Some(&0) && ours_cmp.len() > 2 {
        ours_cmp[2] = 0;
    }
    assert_eq!(
        ours_cmp.as_slice(),
        prom,
        "{kind} chunk {i} bytes differ\nours: {}\nprom: {}",
        bits(ours),
        bits(prom)
    );
}

fn bits(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:08b}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn prometheus_histogram_chunks_decode_and_match_our_encoding() {
    let prom = Prometheus::start(
        "global:\n  scrape_interval: 1h\n",
        &[
            "--enable-feature=native-histograms",
            "--web.enable-remote-write-receiver",
        ],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    // Prometheus's head cuts a chunk at every 2h block boundary, which our codec alone does
    // not know about: start 5 minutes into a 2h window, so the ~8 minutes of samples never
    // cross one, whatever the time of day.
    const BLOCK: i64 = 7_200_000;
    let t0 = (now - 3_600_000).div_euclid(BLOCK) * BLOCK + 300_000;
    let series = |job: &str, s: &[(i64, Histogram)]| prompb::TimeSeries {
        labels: vec![
            prompb::Label {
                name: "__name__".as_bytes().to_vec().into(),
                value: "test_native_histogram".as_bytes().to_vec().into(),
            },
            prompb::Label {
                name: "job".as_bytes().to_vec().into(),
                value: job.as_bytes().to_vec().into(),
            },
        ],
        histograms: s.iter().map(|(t, h)| to_proto(*t, h)).collect(),
        ..Default::default()
    };
    let sent = samples(t0, false);
    let sent_gap = samples(t0, true);
    // Float counts (a third of the integer ones) so the receiver takes them as float
    // histograms.
    let sent_float: Vec<(i64, FloatHistogram)> = sent
        .iter()
        .map(|(t, h)| {
            let mut f = h.to_float();
            f.div(3.0);
            (*t, f)
        })
        .collect();
    let mut float_series = series("f", &[]);
    float_series.histograms = sent_float
        .iter()
        .map(|(t, h)| float_to_proto(*t, h))
        .collect();
    // Gauge histograms, with the left-out empty bucket (gauge chunks took such samples in
    // 2.42 already) and with counts going down (no reset for gauges).
    let mut sent_gauge = sent_gap.clone();
    for (_, h) in sent_gauge.iter_mut() {
        h.counter_reset_hint = CounterResetHint::Gauge;
    }
    let req = prompb::WriteRequest {
        timeseries: vec![
            series("a", &sent),
            series("b", &sent_gap),
            float_series,
            series("g", &sent_gauge),
        ],
        metadata: vec![],
    };
    let (status, body) = send_snappy(
        &prom.url("/api/v1/write"),
        &req.encode_to_vec(),
        "application/x-protobuf",
    );
    assert!(
        status == 204 || status == 200,
        "remote write of native histograms refused: {status} {body}\n{}",
        prom.log()
    );

    let read = |job: &str| -> Option<Vec<prompb::Chunk>> {
        let chunks: Vec<prompb::Chunk> = remote_read_streamed(
            &prom.url("/api/v1/read"),
            vec![
                eq_matcher("__name__", "test_native_histogram"),
                eq_matcher("job", job),
            ],
            t0 - 1,
            now,
        )
        .into_iter()
        .flat_map(|cs| cs.chunks)
        .collect();
        (!chunks.is_empty()).then_some(chunks)
    };
    // 0. The float series comes back as FLOAT_HISTOGRAM chunks, decodes to what was sent,
    //    and our float appender writes the same bytes.
    let fchunks = eventually(Duration::from_secs(20), || read("f"))
        .unwrap_or_else(|| panic!("no chunks read back for f\n{}", prom.log()));
    let mut fdecoded = Vec::new();
    for c in &fchunks {
        assert_eq!(c.r#type, prompb::chunk::Encoding::FloatHistogram as i32);
        let mut it = FloatHistogramIterator::new(&c.data).expect("header");
        while let Some(s) = it.next_histogram().expect("valid chunk") {
            fdecoded.push(s);
        }
    }
    assert_eq!(fdecoded.len(), sent_float.len());
    for ((t, h), (dt, dh)) in sent_float.iter().zip(&fdecoded) {
        assert_eq!(t, dt);
        let (mut a, mut b) = (h.clone(), dh.clone());
        a.compact(0);
        b.compact(0);
        assert_eq!(a, b, "float sample at {t}");
    }
    let fours = encode_float(&sent_float);
    assert_eq!(fours.len(), fchunks.len(), "float chunk count");
    for (i, ((mint, maxt, bytes), c)) in fours.iter().zip(&fchunks).enumerate() {
        assert_eq!(
            (*mint, *maxt),
            (c.min_time_ms, c.max_time_ms),
            "float chunk {i} range"
        );
        assert_same_chunk("float", i, i + 1 == fchunks.len(), bytes, &c.data);
    }

    // 1. Every chunk is a HISTOGRAM chunk and decodes, with our iterator, to what was sent
    //    (up to empty buckets a recoding added).
    let norm = |h: &Histogram| {
        let mut f = h.to_float();
        f.compact(0);
        f
    };
    let mut chunks = Vec::new();
    for (job, sent) in [("g", &sent_gauge), ("b", &sent_gap), ("a", &sent)] {
        chunks = eventually(Duration::from_secs(20), || read(job))
            .unwrap_or_else(|| panic!("no chunks read back for {job}\n{}", prom.log()));
        let mut decoded = Vec::new();
        for c in &chunks {
            assert_eq!(c.r#type, prompb::chunk::Encoding::Histogram as i32);
            let mut it = HistogramIterator::new(&c.data).expect("header");
            while let Some((t, h)) = it.next_histogram().expect("valid chunk") {
                decoded.push((t, h));
            }
        }
        assert_eq!(decoded.len(), sent.len(), "series {job}");
        for ((t, h), (dt, dh)) in sent.iter().zip(&decoded) {
            assert_eq!(t, dt);
            assert_eq!(norm(h), norm(dh), "series {job}, sample at {t}");
        }
        if job == "g" {
            let ours = encode(sent);
            assert_eq!(ours.len(), chunks.len(), "gauge chunk count");
            for (i, ((_, _, bytes), c)) in ours.iter().zip(&chunks).enumerate() {
                assert_same_chunk("gauge", i, i + 1 == chunks.len(), bytes, &c.data);
            }
        }
    }

    // 2. Our appender, fed series a's samples, cuts the same chunks with the same bytes
    //    (header byte included).
    let ours = encode(&sent);
    assert_eq!(
        ours.len(),
        chunks.len(),
        "chunk count: Prometheus {:?}",
        chunks
            .iter()
            .map(|c| (c.min_time_ms, c.max_time_ms))
            .collect::<Vec<_>>()
    );
    for (i, ((mint, maxt, bytes), c)) in ours.iter().zip(&chunks).enumerate() {
        assert_eq!(
            (*mint, *maxt),
            (c.min_time_ms, c.max_time_ms),
            "chunk {i} range"
        );
        assert_same_chunk("integer", i, i + 1 == chunks.len(), bytes, &c.data);
    }
}
