//! Envoy's foreign functions: what `proxy_call_foreign_function` reaches by name in Envoy 1.40
//! (`source/extensions/common/wasm/foreign.cc`), as plain Rust the host calls wrap.
//!
//! The harness provides every name Envoy 1.40 registers: [`IMPLEMENTED`] ones with Envoy's
//! semantics (argument messages decoded as Envoy's protobuf parser does, Envoy's statuses), and
//! [`UNIMPLEMENTED`] ones answering [`Status::Unimplemented`]. Any other name is `NotFound`, as in
//! Envoy, unless a test registered it ([`crate::Host::register_foreign_function`], which also
//! replaces a built-in one).
//!
//! ```
//! use proxy_wasm_harness::abi::Status;
//! use proxy_wasm_harness::foreign::{self, LifeSpan, SetEnvoyFilterState};
//!
//! // What a module sends to `set_envoy_filter_state` to pick tcp_proxy's cluster.
//! let args = SetEnvoyFilterState {
//!     path: "envoy.tcp_proxy.cluster".into(),
//!     value: "cluster_b".into(),
//!     span: LifeSpan::FilterChain,
//! };
//! let bytes = args.encode();
//! assert_eq!(SetEnvoyFilterState::decode(&bytes), Ok(args));
//! assert_eq!(
//!     foreign::filter_state_object("envoy.tcp_proxy.cluster", b"cluster_b"),
//!     Ok(Some(b"cluster_b".to_vec()))
//! );
//! assert_eq!(foreign::filter_state_object("my.own.key", b"x"), Err(Status::NotFound));
//! assert_eq!(foreign::uncompress(&foreign::compress(b"hello")), Ok(b"hello".to_vec()));
//! ```

use crate::abi::Status;
use serde::Serialize;
use std::io::{Read as _, Write as _};

/// `set_envoy_filter_state`: a filter state object of a registered factory on the acting stream.
pub const SET_ENVOY_FILTER_STATE: &str = "set_envoy_filter_state";
/// `clear_route_cache`: asks the HTTP connection manager to pick the route again.
pub const CLEAR_ROUTE_CACHE: &str = "clear_route_cache";
/// `declare_property`: the type, readonly flag and life span of a property set later.
pub const DECLARE_PROPERTY: &str = "declare_property";
/// `compress`: zlib's `compress()` of the arguments.
pub const COMPRESS: &str = "compress";
/// `uncompress`: zlib's `uncompress()` of the arguments.
pub const UNCOMPRESS: &str = "uncompress";

/// The foreign functions the harness implements with Envoy 1.40's semantics.
pub const IMPLEMENTED: &[&str] = &[
    SET_ENVOY_FILTER_STATE,
    CLEAR_ROUTE_CACHE,
    DECLARE_PROPERTY,
    COMPRESS,
    UNCOMPRESS,
];

/// The foreign functions Envoy 1.40 registers that the harness does not implement: they answer
/// [`Status::Unimplemented`] (signatures and CEL expressions).
pub const UNIMPLEMENTED: &[&str] = &[
    "verify_signature",
    "sign",
    "expr_create",
    "expr_evaluate",
    "expr_delete",
];

/// The life span of a filter state object (`envoy.source.extensions.common.wasm.LifeSpan`);
/// unknown numbers are `FilterChain`, as Envoy maps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LifeSpan {
    /// 0: the filter chain (Envoy's `FilterChain`).
    #[default]
    FilterChain,
    /// 1: the downstream request (`Request`).
    DownstreamRequest,
    /// 2: the downstream connection (`Connection`).
    DownstreamConnection,
}

impl LifeSpan {
    /// From the enum's number on the wire (Envoy: anything else is `FilterChain`).
    pub fn from_wire(v: u64) -> LifeSpan {
        // proto3 enums are int32: the low 32 bits of the varint.
        match v as u32 as i32 {
            1 => LifeSpan::DownstreamRequest,
            2 => LifeSpan::DownstreamConnection,
            _ => LifeSpan::FilterChain,
        }
    }

    fn wire(self) -> u64 {
        match self {
            LifeSpan::FilterChain => 0,
            LifeSpan::DownstreamRequest => 1,
            LifeSpan::DownstreamConnection => 2,
        }
    }
}

/// The type of a declared property (`envoy.source.extensions.common.wasm.WasmType`); unknown
/// numbers are `Bytes`, as in Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WasmType {
    /// 0: raw bytes.
    #[default]
    Bytes,
    /// 1: a string.
    String,
    /// 2: a FlatBuffers table (by `schema`).
    FlatBuffers,
    /// 3: a protobuf message (by `schema`).
    Protobuf,
}

impl WasmType {
    /// From the enum's number on the wire.
    pub fn from_wire(v: u64) -> WasmType {
        match v as u32 as i32 {
            1 => WasmType::String,
            2 => WasmType::FlatBuffers,
            3 => WasmType::Protobuf,
            _ => WasmType::Bytes,
        }
    }

    fn wire(self) -> u64 {
        match self {
            WasmType::Bytes => 0,
            WasmType::String => 1,
            WasmType::FlatBuffers => 2,
            WasmType::Protobuf => 3,
        }
    }
}

/// `SetEnvoyFilterStateArguments` (`set_envoy_filter_state.proto`): `string path = 1; string
/// value = 2; LifeSpan span = 3;`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SetEnvoyFilterState {
    /// The filter state key, which is also the name of the object factory.
    pub path: String,
    /// The factory's input.
    pub value: String,
    /// The object's life span.
    pub span: LifeSpan,
}

impl SetEnvoyFilterState {
    /// Decode as Envoy's `ParseFromString` does; `BadArgument` when it would fail.
    pub fn decode(bytes: &[u8]) -> Result<SetEnvoyFilterState, Status> {
        let mut out = SetEnvoyFilterState::default();
        for (field, value) in fields(bytes).map_err(|_| Status::BadArgument)? {
            match (field, value) {
                (1, Wire::Len(b)) => out.path = utf8(b)?,
                (2, Wire::Len(b)) => out.value = utf8(b)?,
                (3, Wire::Varint(v)) => out.span = LifeSpan::from_wire(v),
                _ => {}
            }
        }
        Ok(out)
    }

    /// The message's bytes (fields at their defaults left out, as protobuf writes them).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        put_len(&mut b, 1, self.path.as_bytes());
        put_len(&mut b, 2, self.value.as_bytes());
        put_varint_field(&mut b, 3, self.span.wire());
        b
    }
}

/// `DeclarePropertyArguments` (`declare_property.proto`): `string name = 1; bool readonly = 2;
/// WasmType type = 3; bytes schema = 4; LifeSpan span = 5;`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeclareProperty {
    /// The property's name (its path as `proxy_set_property` gives it).
    pub name: String,
    /// Once set, the property cannot be set again (`BadArgument`).
    pub readonly: bool,
    /// What its value is.
    pub kind: WasmType,
    /// The schema of a FlatBuffers or protobuf value.
    pub schema: Vec<u8>,
    /// The life span of the filter state object that holds it.
    pub span: LifeSpan,
}

impl DeclareProperty {
    /// Decode as Envoy's `ParseFromString` does; `BadArgument` when it would fail.
    pub fn decode(bytes: &[u8]) -> Result<DeclareProperty, Status> {
        let mut out = DeclareProperty::default();
        for (field, value) in fields(bytes).map_err(|_| Status::BadArgument)? {
            match (field, value) {
                (1, Wire::Len(b)) => out.name = utf8(b)?,
                (2, Wire::Varint(v)) => out.readonly = v != 0,
                (3, Wire::Varint(v)) => out.kind = WasmType::from_wire(v),
                (4, Wire::Len(b)) => out.schema = b.to_vec(),
                (5, Wire::Varint(v)) => out.span = LifeSpan::from_wire(v),
                _ => {}
            }
        }
        Ok(out)
    }

    /// The message's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        put_len(&mut b, 1, self.name.as_bytes());
        put_varint_field(&mut b, 2, u64::from(self.readonly));
        put_varint_field(&mut b, 3, self.kind.wire());
        put_len(&mut b, 4, &self.schema);
        put_varint_field(&mut b, 5, self.span.wire());
        b
    }
}

/// A proto3 `string` field: Envoy's parser refuses invalid UTF-8.
fn utf8(b: &[u8]) -> Result<String, Status> {
    String::from_utf8(b.to_vec()).map_err(|_| Status::BadArgument)
}

fn put_varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push((v as u8) | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

fn put_len(b: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    put_varint(b, u64::from(field) << 3 | 2);
    put_varint(b, bytes.len() as u64);
    b.extend_from_slice(bytes);
}

fn put_varint_field(b: &mut Vec<u8>, field: u32, v: u64) {
    if v == 0 {
        return;
    }
    put_varint(b, u64::from(field) << 3);
    put_varint(b, v);
}

/// A field's value on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire<'a> {
    Varint(u64),
    Fixed,
    Len(&'a [u8]),
    Group,
}

/// Why a message does not parse.
#[derive(Debug)]
struct Malformed;

/// A varint at `*at` (at most 10 bytes; the 10th without a continuation bit).
fn varint(b: &[u8], at: &mut usize) -> Result<u64, Malformed> {
    let mut v = 0u64;
    for i in 0..10 {
        let byte = *b.get(*at).ok_or(Malformed)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(Malformed)
}

/// How deep groups may nest (protobuf's default recursion limit).
const MAX_DEPTH: usize = 100;

/// The fields of a message in order, as protobuf's parser reads them: a tag (field number 1 to
/// 2^29 - 1, wire type 0, 1, 2, 3 or 5), then its value; groups (unknown fields here) are
/// skipped to their matching end. Anything else, or bytes left over, is malformed.
fn fields(b: &[u8]) -> Result<Vec<(u32, Wire<'_>)>, Malformed> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < b.len() {
        let (field, value) = field(b, &mut at, 0)?;
        match value {
            Some(v) => out.push((field, v)),
            // An end-group tag outside a group.
            None => return Err(Malformed),
        }
    }
    Ok(out)
}

/// One field at `*at`: `None` for an end-group tag.
fn field<'a>(
    b: &'a [u8],
    at: &mut usize,
    depth: usize,
) -> Result<(u32, Option<Wire<'a>>), Malformed> {
    let tag = varint(b, at)?;
    if tag > u64::from(u32::MAX) {
        return Err(Malformed);
    }
    let number = (tag >> 3) as u32;
    if number == 0 {
        return Err(Malformed);
    }
    let value = match tag & 7 {
        0 => Wire::Varint(varint(b, at)?),
        1 | 5 => {
            let n = if tag & 7 == 1 { 8 } else { 4 };
            if b.len() - *at < n {
                return Err(Malformed);
            }
            *at += n;
            Wire::Fixed
        }
        2 => {
            let n = varint(b, at)?;
            if n > i32::MAX as u64 || n as usize > b.len() - *at {
                return Err(Malformed);
            }
            let v = &b[*at..*at + n as usize];
            *at += n as usize;
            Wire::Len(v)
        }
        3 => {
            if depth >= MAX_DEPTH {
                return Err(Malformed);
            }
            loop {
                if *at >= b.len() {
                    return Err(Malformed);
                }
                let (inner, v) = field(b, at, depth + 1)?;
                if v.is_none() {
                    if inner != number {
                        return Err(Malformed);
                    }
                    break;
                }
            }
            Wire::Group
        }
        4 => return Ok((number, None)),
        _ => return Err(Malformed),
    };
    Ok((number, Some(value)))
}

/// How a filter state object factory of Envoy 1.40 reads its input, and how the object
/// serializes (what `proxy_get_property(["filter_state", NAME])` returns). Measured for each
/// factory by `tests/tests/foreign_functions_in_envoy.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    /// Any bytes; the object serializes as them.
    Any,
    /// Any bytes but none; the object serializes as them.
    NonEmpty,
    /// Any bytes; the object does not serialize (reads as `NotFound`).
    Opaque,
    /// An unsigned 32-bit integer in decimal (`absl::SimpleAtoi`); serializes in decimal.
    U32,
    /// An unsigned 64-bit integer in decimal; serializes in decimal.
    U64,
    /// A port, 0 to 65535, in decimal; serializes in decimal.
    Port,
    /// `absl::SimpleAtob`: `true`, `t`, `yes`, `y`, `1` or `false`, `f`, `no`, `n`, `0` in any
    /// case; serializes as `true` or `false`.
    Bool,
    /// Anything: `true` is true, the rest false; serializes as `true` or `false`.
    TrueOrFalse,
    /// An IP address; serializes as an address with port 0 (`127.0.0.1:0`, `[::1]:0`).
    Ip,
    /// An IP address and port (`1.2.3.4:80`, `[::1]:80`); Envoy's object offers fields, so it
    /// reads as a map, and one without entries (the 4 zero bytes of an empty proxy-wasm map).
    IpPort,
    /// A format the harness does not model (an LLM protocol's enum name, an HTTP/1.1 proxy's
    /// target): every value is refused (`BadArgument`), as Envoy refuses the ones measured.
    Unmodelled,
}

/// The factories Envoy 1.40 registers (its start-up log lists them under
/// `filter_state.object`) and what each takes.
const FACTORIES: &[(&str, Input)] = &[
    ("envoy.ai.llm_protocol.request", Input::Unmodelled),
    ("envoy.ai.model.request", Input::NonEmpty),
    ("envoy.bool", Input::Bool),
    (
        "envoy.filters.listener.original_dst.local_ip",
        Input::IpPort,
    ),
    (
        "envoy.filters.listener.original_dst.remote_ip",
        Input::IpPort,
    ),
    ("envoy.hashable_string", Input::Any),
    ("envoy.network.application_protocols", Input::Opaque),
    ("envoy.network.ip", Input::Ip),
    ("envoy.network.network_namespace", Input::Any),
    (
        "envoy.network.transport_socket.http_11_proxy.info",
        Input::Unmodelled,
    ),
    (
        "envoy.network.transport_socket.original_dst_address",
        Input::IpPort,
    ),
    ("envoy.network.upstream_server_name", Input::Any),
    ("envoy.network.upstream_subject_alt_names", Input::Any),
    ("envoy.ratelimit.hits_addend", Input::U32),
    ("envoy.router.debug_config", Input::Opaque),
    ("envoy.string", Input::Any),
    ("envoy.tcp_proxy.cluster", Input::Any),
    ("envoy.tcp_proxy.disable_tunneling", Input::TrueOrFalse),
    ("envoy.tcp_proxy.per_connection_idle_timeout_ms", Input::U64),
    ("envoy.upstream.dynamic_host", Input::Any),
    ("envoy.upstream.dynamic_port", Input::Port),
];

/// `absl::SimpleAtoi` into an unsigned integer: ASCII whitespace around, an optional `+`, then
/// decimal digits.
fn atoi(text: &str) -> Option<u64> {
    let t = text.trim_ascii();
    let digits = t.strip_prefix('+').unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What `set_envoy_filter_state` makes of a path and value, as Envoy 1.40 does: `NotFound` when
/// no factory of that name is registered, `BadArgument` when the factory refuses the value, else
/// the object as `proxy_get_property(["filter_state", path])` reads it (`None`: the object
/// does not serialize, and reads as `NotFound`).
pub fn filter_state_object(path: &str, value: &[u8]) -> Result<Option<Vec<u8>>, Status> {
    let input = FACTORIES
        .iter()
        .find(|(n, _)| *n == path)
        .map(|(_, i)| *i)
        .ok_or(Status::NotFound)?;
    let text = std::str::from_utf8(value).ok();
    let number = |max: u64| {
        text.and_then(atoi)
            .filter(|n| *n <= max)
            .map(|n| Some(n.to_string().into_bytes()))
            .ok_or(Status::BadArgument)
    };
    let flag = |b: bool| {
        Some(if b {
            b"true".to_vec()
        } else {
            b"false".to_vec()
        })
    };
    match input {
        Input::Any => Ok(Some(value.to_vec())),
        Input::NonEmpty if value.is_empty() => Err(Status::BadArgument),
        Input::NonEmpty => Ok(Some(value.to_vec())),
        Input::Opaque => Ok(None),
        Input::U32 => number(u64::from(u32::MAX)),
        Input::U64 => number(u64::MAX),
        Input::Port => number(65535),
        Input::Bool => match text.map(str::to_ascii_lowercase).as_deref() {
            Some("true" | "t" | "yes" | "y" | "1") => Ok(flag(true)),
            Some("false" | "f" | "no" | "n" | "0") => Ok(flag(false)),
            _ => Err(Status::BadArgument),
        },
        Input::TrueOrFalse => Ok(flag(value == b"true")),
        Input::Ip => match text.and_then(|t| t.parse::<std::net::IpAddr>().ok()) {
            Some(ip) => Ok(Some(
                std::net::SocketAddr::new(ip, 0).to_string().into_bytes(),
            )),
            None => Err(Status::BadArgument),
        },
        Input::IpPort => match text.and_then(|t| t.parse::<std::net::SocketAddr>().ok()) {
            Some(_) => Ok(Some(0u32.to_le_bytes().to_vec())),
            None => Err(Status::BadArgument),
        },
        Input::Unmodelled => Err(Status::BadArgument),
    }
}

/// The factory names Envoy 1.40 registers for filter state objects (category
/// `envoy.filter_state.object`), as the harness knows them.
pub fn filter_state_factories() -> Vec<&'static str> {
    FACTORIES.iter().map(|(n, _)| *n).collect()
}

/// `compress`: zlib's `compress()` (a zlib stream at the default level). Envoy's zlib may
/// choose other bytes for the same input; both decompress to it.
pub fn compress(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}

/// The most `uncompress` inflates: Envoy grows its buffer without a bound (its memory is the
/// limit); the harness stops a decompression bomb here with `SerializationFailure`.
pub const UNCOMPRESS_LIMIT: u64 = 64 << 20;

/// `uncompress`: zlib's `uncompress()`: the data a zlib stream holds (bytes after its end are
/// ignored, as zlib does); `SerializationFailure` for anything else (a truncated or corrupt
/// stream, no stream at all) and past [`UNCOMPRESS_LIMIT`].
pub fn uncompress(data: &[u8]) -> Result<Vec<u8>, Status> {
    uncompress_at_most(data, UNCOMPRESS_LIMIT)
}

fn uncompress_at_most(data: &[u8], limit: u64) -> Result<Vec<u8>, Status> {
    let mut out = Vec::new();
    let n = flate2::read::ZlibDecoder::new(data)
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|_| Status::SerializationFailure)?;
    if n as u64 > limit {
        return Err(Status::SerializationFailure);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn decodes_what_protobuf_writes_and_refuses_what_it_refuses() {
        let a = SetEnvoyFilterState {
            path: "envoy.tcp_proxy.cluster".into(),
            value: "b".into(),
            span: LifeSpan::DownstreamConnection,
        };
        assert_eq!(SetEnvoyFilterState::decode(&a.encode()), Ok(a.clone()));
        // Empty: every field at its default.
        assert_eq!(
            SetEnvoyFilterState::decode(b""),
            Ok(SetEnvoyFilterState::default())
        );
        // Unknown fields of every wire type are skipped; the last value of a field wins.
        let mut b = a.encode();
        b.extend([0x20, 0x05, 0x29, 1, 2, 3, 4, 5, 6, 7, 8, 0x35, 1, 2, 3, 4]);
        b.extend([0x3b, 0x08, 0x01, 0x3c]); // group 7 holding field 1 = 1
        b.extend([0x0a, 0x01, b'z']);
        let d = SetEnvoyFilterState::decode(&b).unwrap();
        assert_eq!((d.path.as_str(), d.value.as_str()), ("z", "b"));
        // A known field of another wire type is an unknown field.
        assert_eq!(
            SetEnvoyFilterState::decode(&[0x08, 0x01]),
            Ok(SetEnvoyFilterState::default())
        );
        for bad in [
            &[0xff][..],         // a truncated tag
            &[0x0a, 0x05, b'a'], // a length past the end
            &[0x0a, 0x01, 0xff], // a string that is not UTF-8
            &[0x00, 0x00],       // field number 0
            &[0x0e, 0x00],       // wire type 6
            &[0x0c],             // an end group outside a group
            &[0x0b, 0x08, 0x01], // a group never ended
            &[0x0b, 0x14],       // a group ended with another number
            &[0x29, 1, 2, 3],    // a fixed64 cut short
            &[
                0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        ] {
            assert_eq!(
                SetEnvoyFilterState::decode(bad),
                Err(Status::BadArgument),
                "{bad:?}"
            );
        }
        // Enums: unknown numbers are the default.
        assert_eq!(
            SetEnvoyFilterState::decode(&[0x18, 0x07]).unwrap().span,
            LifeSpan::FilterChain
        );
    }

    #[test]
    fn declare_property_round_trips() {
        let d = DeclareProperty {
            name: "my_prop".into(),
            readonly: true,
            kind: WasmType::Protobuf,
            schema: vec![0, 159, 146],
            span: LifeSpan::DownstreamRequest,
        };
        assert_eq!(DeclareProperty::decode(&d.encode()), Ok(d));
        // bytes need not be UTF-8; a bool is any non-zero varint.
        let d = DeclareProperty::decode(&[0x22, 0x01, 0xff, 0x10, 0x80, 0x01]).unwrap();
        assert_eq!(d.schema, [0xff]);
        assert!(d.readonly);
    }

    #[test]
    fn factories_are_found_by_name_and_check_their_input() {
        assert_eq!(
            filter_state_object("envoy.tcp_proxy.cluster", b"anything"),
            Ok(Some(b"anything".to_vec()))
        );
        assert_eq!(filter_state_object("", b""), Err(Status::NotFound));
        let ok = |p: &str, v: &str| filter_state_object(p, v.as_bytes());
        let some = |v: &str| Ok(Some(v.as_bytes().to_vec()));
        assert_eq!(ok("envoy.upstream.dynamic_port", " +80 "), some("80"));
        assert_eq!(
            ok("envoy.upstream.dynamic_port", "65536"),
            Err(Status::BadArgument)
        );
        assert_eq!(
            ok("envoy.ratelimit.hits_addend", "-1"),
            Err(Status::BadArgument)
        );
        assert_eq!(ok("envoy.bool", "No"), some("false"));
        assert_eq!(ok("envoy.bool", "x"), Err(Status::BadArgument));
        assert_eq!(ok("envoy.tcp_proxy.disable_tunneling", "x"), some("false"));
        assert_eq!(ok("envoy.network.ip", "::1"), some("[::1]:0"));
        assert_eq!(ok("envoy.network.application_protocols", "h2"), Ok(None));
        assert_eq!(ok("envoy.ai.model.request", ""), Err(Status::BadArgument));
        assert_eq!(filter_state_factories().len(), 21);
        assert_eq!(
            filter_state_object("wasm.my_prop", b"x"),
            Err(Status::NotFound)
        );
    }

    #[test]
    fn uncompress_takes_zlib_streams_only() {
        let c = compress(b"hello hello hello");
        assert_eq!(uncompress(&c), Ok(b"hello hello hello".to_vec()));
        assert_eq!(uncompress(&compress(b"")), Ok(Vec::new()));
        for bad in [&b""[..], b"hello", &c[..c.len() - 1]] {
            assert_eq!(uncompress(bad), Err(Status::SerializationFailure));
        }
        // zlib stops at the stream's end.
        let mut trailing = c.clone();
        trailing.push(0);
        assert_eq!(uncompress(&trailing), Ok(b"hello hello hello".to_vec()));
        // A bomb stops at the limit.
        let bomb = compress(&[0u8; 4097]);
        assert_eq!(uncompress_at_most(&bomb, 4097), Ok(vec![0u8; 4097]));
        assert_eq!(
            uncompress_at_most(&bomb, 4096),
            Err(Status::SerializationFailure)
        );
    }
}
