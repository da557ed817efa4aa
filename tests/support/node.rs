//! Running the `dataplane` binary on lab nodes.
