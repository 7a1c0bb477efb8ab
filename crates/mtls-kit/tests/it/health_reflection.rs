//! grpc.health.v1 and gRPC server reflection (v1), over the same mTLS and
//! behind the same authorization.

use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

use crate::helpers::{spawn_server, TestPki, POLICY};

#[tokio::test]
async fn health_reports_serving_over_mtls() {
    let pki = TestPki::new();
    let server = spawn_server(&pki, POLICY).await;
    let mut health = HealthClient::new(server.connect(&pki.client("reader")).await.unwrap());
    for service in ["", "kittest.v1.Store"] {
        let reply = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.status(), ServingStatus::Serving, "{service:?}");
    }
    // Health is authorized like any RPC: the policy denies outsiders.
    let mut outsider = HealthClient::new(server.connect(&pki.client("outsider")).await.unwrap());
    let status = outsider
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

async fn reflect(
    client: &mut ServerReflectionClient<tonic::transport::Channel>,
    request: MessageRequest,
) -> MessageResponse {
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut replies = client
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.next().await.unwrap().unwrap();
    reply.message_response.unwrap()
}

#[tokio::test]
async fn reflection_lists_and_describes_services_over_mtls() {
    let pki = TestPki::new();
    let server = spawn_server(&pki, POLICY).await;
    let mut client =
        ServerReflectionClient::new(server.connect(&pki.client("reader")).await.unwrap());

    let MessageResponse::ListServicesResponse(list) =
        reflect(&mut client, MessageRequest::ListServices(String::new())).await
    else {
        panic!("expected a service list");
    };
    let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "kittest.v1.Store"
        ]
    );

    let MessageResponse::FileDescriptorResponse(files) = reflect(
        &mut client,
        MessageRequest::FileContainingSymbol("kittest.v1.Store.Scan".into()),
    )
    .await
    else {
        panic!("expected a file descriptor");
    };
    use prost::Message;
    let file = prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice())
        .unwrap();
    assert_eq!(file.package(), "kittest.v1");
    let service = &file.service[0];
    let list = service.method.iter().find(|m| m.name() == "Scan").unwrap();
    assert!(list.server_streaming());
    assert_eq!(list.input_type(), ".kittest.v1.Key");
}
