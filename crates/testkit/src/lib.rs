//! m3query's test kit.
