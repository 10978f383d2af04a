//! Pull-score leader election (placeholder, being written).
