//! The conformance suite: one set of expectations every backend must meet.
