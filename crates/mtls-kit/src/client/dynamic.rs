//! Calling any served method by its path, with messages as JSON.
//!
//! A server built on the kit knows every method it serves from the encoded
//! `FileDescriptorSet`s it registers ([`crate::server::Services::descriptor_sets`]).
//! [`Schema`] reads them with prost-reflect, so a client binary can call any
//! of those methods without code generated for it: the request is parsed
//! from JSON (the proto3 JSON mapping) into a [`DynamicMessage`], and each
//! reply is printed back as JSON. This is what keeps the template's client
//! working, unchanged, when a team replaces the example's proto.
//!
//! Every kind of call goes through one bidirectional HTTP/2 stream: on the
//! wire, a unary call is a stream that carries one request and one reply.

use std::fmt;

use bytes::Buf;
use prost::Message;
pub use prost_reflect::DynamicMessage;
use prost_reflect::{DescriptorPool, MessageDescriptor, MethodDescriptor};
use serde::Serialize;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// The shape of a call: how many messages go each way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallKind {
    /// One request, one reply.
    Unary,
    /// One request, a stream of replies.
    ServerStreaming,
    /// A stream of requests, one reply.
    ClientStreaming,
    /// A stream each way.
    BidiStreaming,
}

impl CallKind {
    /// Whether the client sends a stream of requests.
    pub fn client_streams(self) -> bool {
        matches!(self, Self::ClientStreaming | Self::BidiStreaming)
    }

    /// Whether the server sends a stream of replies.
    pub fn server_streams(self) -> bool {
        matches!(self, Self::ServerStreaming | Self::BidiStreaming)
    }
}

impl fmt::Display for CallKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unary => "unary",
            Self::ServerStreaming => "server streaming",
            Self::ClientStreaming => "client streaming",
            Self::BidiStreaming => "bidi streaming",
        })
    }
}

/// Why a schema or a method could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A descriptor set does not decode, or uses a type that no set before
    /// it defines.
    #[error("reading a descriptor set: {0}")]
    Descriptors(#[from] prost_reflect::DescriptorError),
    /// No served method fits the name ([`Schema::method`]).
    #[error("no served method is named {name:?}{}", hint(.suggestion))]
    UnknownMethod {
        /// The name as given.
        name: String,
        /// The served path closest in spelling, if one is close enough to
        /// be a likely typo.
        suggestion: Option<String>,
    },
    /// A short name (`Method` or `Service/Method`) fits more than one
    /// served method; the full path is needed.
    #[error("{name:?} is ambiguous: it names {}", .candidates.join(", "))]
    Ambiguous {
        /// The name as given.
        name: String,
        /// The full paths it fits.
        candidates: Vec<String>,
    },
    /// A request is not valid proto3 JSON for the method's input message
    /// ([`Method::request`]).
    #[error("request for {method} is not valid JSON for {message}: {source}")]
    Request {
        /// The method's path.
        method: String,
        /// The full name of its input message.
        message: String,
        /// What the JSON parser refused.
        source: serde_json::Error,
    },
}

fn hint(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map(|s| format!("; did you mean {s:?}? (`methods` lists them)"))
        .unwrap_or_else(|| " (`methods` lists them)".to_owned())
}

/// Every method of a set of encoded `FileDescriptorSet`s.
#[derive(Clone, Debug)]
pub struct Schema {
    pool: DescriptorPool,
}

impl Schema {
    /// Reads the descriptor sets, in order (a set may use types of the sets
    /// before it; a file that two sets carry is read once).
    pub fn from_encoded<'a>(sets: impl IntoIterator<Item = &'a [u8]>) -> Result<Self, SchemaError> {
        let mut pool = DescriptorPool::new();
        for set in sets {
            pool.decode_file_descriptor_set(set)?;
        }
        Ok(Self { pool })
    }

    /// Every method, sorted by path.
    pub fn methods(&self) -> Vec<Method> {
        let mut methods: Vec<Method> = self
            .pool
            .services()
            .flat_map(|s| s.methods().collect::<Vec<_>>())
            .map(Method::new)
            .collect();
        methods.sort_by(|a, b| a.path.cmp(&b.path));
        methods.dedup_by(|a, b| a.path == b.path);
        methods
    }

    /// The method `name` names: its full path (`/pkg.Service/Method`), the
    /// path without the leading `/`, `Service/Method`, or just `Method`,
    /// as long as only one served method fits.
    pub fn method(&self, name: &str) -> Result<Method, SchemaError> {
        let methods = self.methods();
        let wanted = name.trim_start_matches('/');
        if let Some(m) = methods.iter().find(|m| &m.path[1..] == wanted) {
            return Ok(m.clone());
        }
        let fits: Vec<&Method> = methods
            .iter()
            .filter(|m| {
                let full = &m.path[1..];
                let (service, method) = full.split_once('/').unwrap_or(("", full));
                let short_service = service.rsplit('.').next().unwrap_or(service);
                wanted == method || wanted == format!("{short_service}/{method}")
            })
            .collect();
        match fits.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(SchemaError::UnknownMethod {
                name: name.to_owned(),
                suggestion: closest(wanted, &methods),
            }),
            many => Err(SchemaError::Ambiguous {
                name: name.to_owned(),
                candidates: many.iter().map(|m| m.path.clone()).collect(),
            }),
        }
    }
}

/// The served path closest in spelling to `wanted`, if any is close.
fn closest(wanted: &str, methods: &[Method]) -> Option<String> {
    methods
        .iter()
        .map(|m| {
            // Against each form `method` accepts: full, Service/Method, Method.
            let full = &m.path[1..];
            let (service, method) = full.split_once('/').unwrap_or(("", full));
            let short_service = service.rsplit('.').next().unwrap_or(service);
            let d = [full, &format!("{short_service}/{method}"), method]
                .iter()
                .map(|form| strsim::levenshtein(wanted, form))
                .min()
                .unwrap_or(usize::MAX);
            (d, &m.path)
        })
        .filter(|(d, _)| *d <= wanted.len().max(3) / 3)
        .min()
        .map(|(_, p)| p.clone())
}

/// One method, as the schema describes it.
#[derive(Clone, Debug)]
pub struct Method {
    path: String,
    desc: MethodDescriptor,
}

impl Method {
    fn new(desc: MethodDescriptor) -> Self {
        let path = format!("/{}/{}", desc.parent_service().full_name(), desc.name());
        Self { path, desc }
    }

    /// `/package.Service/Method`, as on the wire and in policies.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether requests and replies are streamed, from the proto.
    pub fn kind(&self) -> CallKind {
        match (
            self.desc.is_client_streaming(),
            self.desc.is_server_streaming(),
        ) {
            (false, false) => CallKind::Unary,
            (false, true) => CallKind::ServerStreaming,
            (true, false) => CallKind::ClientStreaming,
            (true, true) => CallKind::BidiStreaming,
        }
    }

    /// The request message's type.
    pub fn input(&self) -> MessageDescriptor {
        self.desc.input()
    }

    /// The reply message's type.
    pub fn output(&self) -> MessageDescriptor {
        self.desc.output()
    }

    /// Whether the proto marks the method safe to repeat: its
    /// `idempotency_level` option is `NO_SIDE_EFFECTS` or `IDEMPOTENT`.
    pub fn idempotent(&self) -> bool {
        // google.protobuf.MethodOptions.idempotency_level (field 34):
        // 0 unknown, 1 no side effects, 2 idempotent.
        self.desc
            .options()
            .get_field_by_number(34)
            .and_then(|v| v.as_enum_number())
            .is_some_and(|level| level == 1 || level == 2)
    }

    /// Parses one request from JSON (the proto3 JSON mapping; unknown
    /// fields are an error, so a typo is not silently dropped).
    pub fn request(&self, json: &str) -> Result<DynamicMessage, SchemaError> {
        let mut de = serde_json::Deserializer::from_str(json);
        DynamicMessage::deserialize(self.input(), &mut de)
            .and_then(|m| de.end().map(|()| m))
            .map_err(|source| SchemaError::Request {
                method: self.path.clone(),
                message: self.input().full_name().to_owned(),
                source,
            })
    }

    /// A codec that writes this method's requests and reads its replies.
    pub fn codec(&self) -> DynamicCodec {
        DynamicCodec {
            output: self.output(),
        }
    }

    /// What `methods --json` prints for this method.
    pub fn summary(&self) -> MethodSummary {
        MethodSummary {
            path: self.path.clone(),
            kind: self.kind(),
            client_streaming: self.kind().client_streams(),
            server_streaming: self.kind().server_streams(),
            input: self.input().full_name().to_owned(),
            output: self.output().full_name().to_owned(),
            idempotent: self.idempotent(),
        }
    }
}

/// One method, for listing.
#[derive(Clone, Debug, Serialize)]
pub struct MethodSummary {
    /// `/package.Service/Method`.
    pub path: String,
    /// The shape of a call.
    pub kind: CallKind,
    /// Whether the client streams requests. Redundant with `kind`, spelled
    /// out for readers of the JSON.
    pub client_streaming: bool,
    /// Whether the server streams replies. Redundant with `kind`, like
    /// `client_streaming`.
    pub server_streaming: bool,
    /// The request message's full name.
    pub input: String,
    /// The reply message's full name.
    pub output: String,
    /// Whether the proto marks the method safe to repeat
    /// ([`Method::idempotent`]).
    pub idempotent: bool,
}

impl fmt::Display for MethodSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}) {} -> {}",
            self.path, self.kind, self.input, self.output
        )
    }
}

/// Prints every method of `schema`: one line each, or with `json` one JSON
/// document `{"methods": [...]}` (see [`MethodSummary`]).
pub fn print_methods(
    schema: &Schema,
    json: bool,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let methods: Vec<MethodSummary> = schema.methods().iter().map(Method::summary).collect();
    if json {
        let doc = serde_json::json!({ "methods": methods });
        writeln!(out, "{doc}")
    } else {
        methods.iter().try_for_each(|m| writeln!(out, "{m}"))
    }
}

/// `methods [--json]` for a binary that serves, or calls, the methods of
/// `descriptor_sets` ([`crate::server::Services::descriptor_sets`]).
pub fn methods_command(descriptor_sets: &[&[u8]], json: bool) -> std::process::ExitCode {
    let schema = match Schema::from_encoded(descriptor_sets.iter().copied()) {
        Ok(schema) => schema,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match print_methods(&schema, json, &mut std::io::stdout().lock()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: writing the list: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// One reply as a line of JSON (the proto3 JSON mapping).
pub fn reply_json(reply: &DynamicMessage) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut out);
    match reply.serialize(&mut ser) {
        Ok(()) => String::from_utf8_lossy(&out).into_owned(),
        // Only non-finite floats cannot be written; say so on the line.
        Err(e) => format!("{{\"error\": {:?}}}", e.to_string()),
    }
}

/// Makes one call of `method` over `channel`: sends `requests` (for a
/// unary or server-streaming method, give exactly one) with `metadata` and
/// a deadline of `timeout`, and returns the reply stream (one message for
/// unary and client-streaming methods). The status the call ends with
/// comes from the stream.
pub async fn call<T, S>(
    channel: T,
    method: &Method,
    requests: S,
    timeout: std::time::Duration,
    metadata: &tonic::metadata::MetadataMap,
) -> Result<tonic::Response<tonic::Streaming<DynamicMessage>>, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
    S: tokio_stream::Stream<Item = DynamicMessage> + Send + 'static,
{
    let (mut grpc, path) = ready(channel, method).await?;
    let mut request = super::cli::request(requests, timeout);
    if !metadata.is_empty() {
        let mut headers = metadata.clone().into_headers();
        headers.extend(request.metadata().clone().into_headers());
        *request.metadata_mut() = tonic::metadata::MetadataMap::from_headers(headers);
    }
    grpc.streaming(request, path, method.codec()).await
}

/// A gRPC client over `channel`, ready for a call, and `method`'s path.
async fn ready<T>(
    channel: T,
    method: &Method,
) -> Result<(tonic::client::Grpc<T>, http::uri::PathAndQuery), Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("not ready: {}", e.into())))?;
    let path = http::uri::PathAndQuery::try_from(method.path())
        .map_err(|e| Status::internal(format!("method path {:?}: {e}", method.path())))?;
    Ok((grpc, path))
}

/// Makes one unary call of `method` (see [`call`]).
pub async fn unary<T>(
    channel: T,
    method: &Method,
    request: DynamicMessage,
    timeout: std::time::Duration,
) -> Result<tonic::Response<DynamicMessage>, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let (mut grpc, path) = ready(channel, method).await?;
    grpc.unary(super::cli::request(request, timeout), path, method.codec())
        .await
}

/// A tonic codec for one method's [`DynamicMessage`]s.
#[derive(Clone, Debug)]
pub struct DynamicCodec {
    output: MessageDescriptor,
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder {
            output: self.output.clone(),
        }
    }
}

/// Writes a request.
#[derive(Clone, Debug)]
pub struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // EncodeBuf grows as needed, so encoding cannot run out of room.
        dst.reserve(item.encoded_len());
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the request: {e}")))
    }
}

/// Reads a reply of the method's output type.
#[derive(Clone, Debug)]
pub struct DynamicDecoder {
    output: MessageDescriptor,
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        DynamicMessage::decode(self.output.clone(), bytes)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding the reply: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema::from_encoded([
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ])
        .unwrap()
    }

    #[test]
    fn methods_are_listed_with_their_kinds() {
        let summaries: Vec<(String, CallKind)> = schema()
            .methods()
            .iter()
            .map(|m| (m.path().to_owned(), m.kind()))
            .collect();
        assert_eq!(
            summaries,
            [
                ("/grpc.health.v1.Health/Check".to_owned(), CallKind::Unary),
                (
                    "/grpc.health.v1.Health/Watch".to_owned(),
                    CallKind::ServerStreaming
                ),
                (
                    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo".to_owned(),
                    CallKind::BidiStreaming
                ),
                (
                    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo".to_owned(),
                    CallKind::BidiStreaming
                ),
            ]
        );
    }

    #[test]
    fn a_method_is_found_by_any_unambiguous_name() {
        let s = schema();
        for name in [
            "/grpc.health.v1.Health/Check",
            "grpc.health.v1.Health/Check",
            "Health/Check",
            "Check",
        ] {
            assert_eq!(
                s.method(name).unwrap().path(),
                "/grpc.health.v1.Health/Check"
            );
        }
        let e = s.method("ServerReflectionInfo").unwrap_err().to_string();
        assert!(e.contains("is ambiguous") && e.contains("v1alpha"), "{e}");
        let e = s.method("Health/Chek").unwrap_err().to_string();
        assert!(
            e.contains("did you mean \"/grpc.health.v1.Health/Check\"?"),
            "{e}"
        );
    }

    #[test]
    fn the_protos_idempotency_level_says_whether_a_method_may_be_retried() {
        use prost_types::method_options::IdempotencyLevel;
        use prost_types::{
            DescriptorProto, FileDescriptorProto, FileDescriptorSet, MethodDescriptorProto,
            MethodOptions, ServiceDescriptorProto,
        };
        let method = |name: &str, level: Option<IdempotencyLevel>| MethodDescriptorProto {
            name: Some(name.into()),
            input_type: Some(".t.M".into()),
            output_type: Some(".t.M".into()),
            options: level.map(|l| MethodOptions {
                idempotency_level: Some(l as i32),
                ..Default::default()
            }),
            ..Default::default()
        };
        let set = FileDescriptorSet {
            file: vec![FileDescriptorProto {
                name: Some("t.proto".into()),
                package: Some("t".into()),
                message_type: vec![DescriptorProto {
                    name: Some("M".into()),
                    ..Default::default()
                }],
                service: vec![ServiceDescriptorProto {
                    name: Some("S".into()),
                    method: vec![
                        method("Read", Some(IdempotencyLevel::NoSideEffects)),
                        method("Set", Some(IdempotencyLevel::Idempotent)),
                        method("Write", None),
                        method("Unknown", Some(IdempotencyLevel::IdempotencyUnknown)),
                    ],
                    ..Default::default()
                }],
                syntax: Some("proto3".into()),
                ..Default::default()
            }],
        };
        let schema = Schema::from_encoded([set.encode_to_vec().as_slice()]).unwrap();
        let idempotent: Vec<(String, bool)> = schema
            .methods()
            .iter()
            .map(|m| (m.path().to_owned(), m.idempotent()))
            .collect();
        assert_eq!(
            idempotent,
            [
                ("/t.S/Read".to_owned(), true),
                ("/t.S/Set".to_owned(), true),
                ("/t.S/Unknown".to_owned(), false),
                ("/t.S/Write".to_owned(), false),
            ]
        );
    }

    #[test]
    fn requests_are_strict_json_and_replies_round_trip() {
        let check = schema().method("Check").unwrap();
        let req = check.request(r#"{"service": "a.B"}"#).unwrap();
        assert_eq!(reply_json(&req), r#"{"service":"a.B"}"#);
        let e = check
            .request(r#"{"srevice": "a.B"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("grpc.health.v1.HealthCheckRequest") && e.contains("srevice"),
            "{e}"
        );
        assert!(check.request("{} x").is_err());

        let bytes = req.encode_to_vec();
        let back = DynamicMessage::decode(check.input(), bytes.as_slice()).unwrap();
        assert_eq!(back, req);
    }
}
