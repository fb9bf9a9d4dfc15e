//! etcdserverpb.Watch: one bidirectional stream per call.
//!
//! Two tasks per stream. The reader turns client requests into calls on the
//! store's [`WatchControl`]; the writer drains [`WatchEvents`] into a bounded
//! channel that tonic sends from. When the client goes away tonic drops the
//! channel's receiver, the writer sees it closed and ends, and the reader is
//! ended with it, so a vanished client costs nothing for long.

use crate::Server;
use crate::auth::{AuthInfo, Need, Span};
use crate::responses::{self, Feed, Responses};
use roster_api::EtcdError;
use roster_api::etcdserverpb::{
    WatchCreateRequest, WatchRequest, WatchResponse, watch_request::RequestUnion, watch_server::Watch,
};
use roster_store::{WatchControl, WatchEvents};
use tonic::{Code, Request, Response, Status, Streaming};

const WATCH: &str = "/etcdserverpb.Watch/Watch";

/// Responses queued for tonic per stream, and their bytes at most. The
/// store keeps its own, larger queue behind this one and switches a slow
/// stream to catch-up from history, so this only smooths the hand-off.
const SEND_BUFFER: usize = 64;
const SEND_BYTES: u32 = 1 << 20;

// === impl Server as Watch ===

#[tonic::async_trait]
impl Watch for Server {
    type WatchStream = Responses<WatchResponse>;

    async fn watch(&self, req: Request<Streaming<WatchRequest>>) -> Result<Response<Self::WatchStream>, Status> {
        // The caller is known once per stream, as etcd reads the stream's
        // metadata; each watch created on it is checked on its own range.
        let who = self.gate().identify(req.metadata(), req.extensions());
        let inbound = req.into_inner();
        let (control, events) = self.store().watch_stream();
        let (tx, rx) = responses::queue_with_bytes(SEND_BUFFER, SEND_BYTES);
        tokio::spawn(run(self.clone(), who, inbound, control, events, tx));
        Ok(Response::new(rx))
    }
}

/// Runs one stream until the client leaves or the server stops.
async fn run(
    server: Server,
    who: Result<Option<AuthInfo>, EtcdError>,
    inbound: Streaming<WatchRequest>,
    control: WatchControl,
    events: WatchEvents,
    tx: Feed<WatchResponse>,
) {
    let _gauge = server.metrics().watch_stream();
    // The writer holds a control clone too: a client that closes its send
    // side keeps receiving events, as with etcd, until it goes away.
    let reader = read_requests(&server, &who, inbound, control.clone(), &tx);
    let writer = write_responses(&server, events, &tx, control);
    tokio::pin!(reader);
    let code = tokio::select! {
        code = writer => code,
        () = server.stop().wait() => {
            let _ = tx.try_send(Err(EtcdError::Stopped.into()));
            Code::Unavailable
        }
        // Keep reading requests while the writer runs; a finished reader
        // alone does not end the stream.
        () = async { (&mut reader).await; std::future::pending::<()>().await } => unreachable!(),
    };
    server.metrics().observe(WATCH, code, None);
}

async fn read_requests(
    server: &Server,
    who: &Result<Option<AuthInfo>, EtcdError>,
    mut inbound: Streaming<WatchRequest>,
    control: WatchControl,
    tx: &Feed<WatchResponse>,
) {
    loop {
        let req = match inbound.message().await {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(status) => {
                tracing::debug!(%status, "watch stream broke");
                return;
            }
        };
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => match permitted(server, who, &c) {
                Ok(()) => control.create(c).await,
                Err(denied) => {
                    if deny(server, denied, tx).await.is_err() {
                        return;
                    }
                }
            },
            Some(RequestUnion::CancelRequest(c)) => control.cancel(c.watch_id).await,
            Some(RequestUnion::ProgressRequest(_)) => control.progress().await,
            // A kind from a newer etcd: ignored, as etcd ignores unknown ones.
            None => {}
        }
    }
}

/// Read on the watched range (an empty key is "\0", the smallest), with a
/// valid token.
fn permitted(
    server: &Server,
    who: &Result<Option<AuthInfo>, EtcdError>,
    c: &WatchCreateRequest,
) -> Result<(), EtcdError> {
    let key: &[u8] = if c.key.is_empty() { b"\0" } else { &c.key };
    let need = Need::Keys {
        spans: vec![Span { key: key.into(), range_end: c.range_end[..].into(), write: false }],
        leases: vec![],
    };
    server.gate().permit(who, &need, server.store())
}

/// etcd's answer to a watch the caller may not open: created and canceled
/// at once, with watch id -1 and the whole gRPC error text (code included)
/// as the reason: a bad token, no user, an old auth revision, else
/// permission denied.
async fn deny(server: &Server, denied: EtcdError, tx: &Feed<WatchResponse>) -> Result<(), crate::responses::Gone> {
    let mut header =
        roster_api::etcdserverpb::ResponseHeader { revision: server.store().revision(), ..Default::default() };
    server.fill_ids(&mut header);
    let reason = match denied {
        e @ (EtcdError::InvalidAuthToken | EtcdError::AuthOldRevision | EtcdError::UserEmpty) => e,
        _ => EtcdError::PermissionDenied,
    };
    let status = tonic::Status::from(reason);
    let resp = WatchResponse {
        header: Some(header),
        watch_id: -1,
        created: true,
        canceled: true,
        cancel_reason: format!("rpc error: code = {:?} desc = {}", status.code(), status.message()),
        ..Default::default()
    };
    tx.send(Ok(resp)).await
}

async fn write_responses(
    server: &Server,
    mut events: WatchEvents,
    tx: &Feed<WatchResponse>,
    _control: WatchControl,
) -> Code {
    loop {
        let next = tokio::select! {
            next = events.next_sized() => next,
            () = tx.closed() => return Code::Cancelled,
        };
        let Some((mut resp, bytes)) = next else { return Code::Ok };
        // etcd's watch header keeps the revision it was built with, even 0.
        server.fill_ids(resp.header.get_or_insert_with(Default::default));
        if tx.send_sized(Ok(resp), bytes).await.is_err() {
            return Code::Cancelled;
        }
    }
}
