//! The site's half of an update upload: header, wait for the coordinator's go-ahead, then the
//! body (chunks and trailer). Waiting before sending means a site queued behind other
//! transfers has nothing buffered in the coordinator, however many sites upload at once.

use tokio_stream::{Stream, StreamExt};
use tonic::Status;
use tonic::transport::Channel;

use crate::pb::{self, site_client::SiteClient, upload_part::Part, upload_progress::Step};

/// Uploads `body` (chunk and trailer parts) for `header.task_id`; returns the coordinator's
/// answer once it has stored the update, or its refusal (which may come before `body` is sent,
/// or at the first bad byte).
pub async fn upload_update<S>(
    client: &mut SiteClient<Channel>,
    header: pb::UploadHeader,
    body: S,
) -> Result<pb::UploadReply, Status>
where
    S: Stream<Item = pb::UploadPart> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::UploadPart {
        part: Some(Part::Header(header)),
    })
    .await
    .map_err(|_| Status::internal("upload channel closed"))?;
    let mut replies = client
        .upload_update(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    match replies.message().await?.and_then(|p| p.step) {
        Some(Step::Ready(_)) => {}
        Some(Step::Done(_)) => {
            return Err(Status::internal(
                "coordinator answered `done` before the upload was sent",
            ));
        }
        None => {
            return Err(Status::unavailable(
                "coordinator ended the upload before it started",
            ));
        }
    }
    let pump = tokio::spawn(async move {
        let mut body = std::pin::pin!(body);
        while let Some(part) = body.next().await {
            if tx.send(part).await.is_err() {
                return;
            }
        }
    });
    // The answer may come early (a refusal at the first bad chunk): stop sending then.
    let answer = replies.message().await;
    pump.abort();
    match answer?.and_then(|p| p.step) {
        Some(Step::Done(reply)) => Ok(reply),
        Some(Step::Ready(_)) => Err(Status::internal(
            "coordinator answered `ready` twice in one upload",
        )),
        None => Err(Status::unavailable(
            "coordinator ended the upload without an answer",
        )),
    }
}
