//! Loki's push protobuf (`pkg/push/push.proto`, package `logproto`), written by hand.
//!
//! Why by hand: Loki's schema is four small messages, and a `build.rs` with `protoc` would add a
//! system dependency for nothing. Field numbers are Loki's (see `protocol-facts.md` §1.2); the
//! golden test in `sink::encode` pins the bytes. The writer does not build these structs per
//! entry (`sink::encode` writes the same wire format straight into its buffer); they serve the
//! decoder in tests, the fuzz round trip, and anyone reading the format.

/// `logproto.PushRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    pub streams: Vec<StreamAdapter>,
}

/// `logproto.StreamAdapter`: one label set and its entries, in order.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamAdapter {
    /// Prometheus text form, `{a="b", c="d"}`.
    #[prost(string, tag = "1")]
    pub labels: String,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<EntryAdapter>,
    /// Internal to Loki; clients leave it 0.
    #[prost(uint64, tag = "3")]
    pub hash: u64,
}

/// `logproto.EntryAdapter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EntryAdapter {
    #[prost(message, optional, tag = "1")]
    pub timestamp: Option<Timestamp>,
    #[prost(string, tag = "2")]
    pub line: String,
    #[prost(message, repeated, tag = "3")]
    pub structured_metadata: Vec<LabelPairAdapter>,
}

/// `logproto.LabelPairAdapter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelPairAdapter {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}
