//! The HTTP handlers, one per provider: verify, apply, answer.

use super::*;

/// Verifies with `check` and applies, answering as the provider expects.
pub(super) async fn handle(
    receiver: Arc<Receiver>,
    provider: &'static str,
    taken: Taken,
    check: impl FnOnce(&Receiver, &HeaderMap, &[u8]) -> Result<Verified, Refusal>,
) -> Response {
    let verified = match check(&receiver, &taken.headers, &taken.body) {
        Ok(v) => v,
        Err(refusal) => return refused(provider, refusal),
    };
    finish(receiver, provider, verified).await
}

pub(super) fn refused(provider: &'static str, refusal: Refusal) -> Response {
    match refusal {
        Refusal::Unauthorized(why) => {
            warn!(provider, reason = %why, "webhook request refused");
            let mut r = answer(StatusCode::UNAUTHORIZED, "not authenticated");
            if provider == "postmark" {
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"verdicts webhooks\""),
                );
            }
            r
        }
        Refusal::Malformed(why) => {
            warn!(provider, reason = %why, "webhook request malformed");
            answer(StatusCode::BAD_REQUEST, &why)
        }
    }
}

pub(super) async fn finish(
    receiver: Arc<Receiver>,
    provider: &'static str,
    verified: Verified,
) -> Response {
    let result = tokio::task::spawn_blocking(move || apply(&receiver, provider, &verified)).await;
    match result {
        Ok(Ok(done)) => (
            StatusCode::OK,
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(done),
        )
            .into_response(),
        Ok(Err(ApplyError::Replay)) => refused(
            provider,
            Refusal::unauthorized("a replay: this request's token or signature was used before"),
        ),
        Ok(Err(ApplyError::Store(e))) => {
            warn!(provider, error = %format!("{e:#}"), "webhook events not recorded");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "the events could not be recorded; retry later",
            )
        }
        Err(e) => {
            warn!(provider, error = %e, "webhook worker failed");
            answer(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

pub(super) async fn ses_hook(State(receiver): State<Arc<Receiver>>, req: Request) -> Response {
    let taken = match take(&receiver, req).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let Some(config) = receiver.config.ses.as_ref() else {
        return answer(StatusCode::NOT_FOUND, "not configured");
    };
    match ses::verify(
        config,
        &receiver.certs,
        receiver.config.max_age,
        &taken.body,
    )
    .await
    {
        Ok(ses::Outcome::Events(verified)) => finish(receiver.clone(), "ses", verified).await,
        Ok(ses::Outcome::Confirmed(topic)) => {
            info!(topic = %topic, "SNS subscription confirmed");
            (
                StatusCode::OK,
                axum::Json(serde_json::json!({ "confirmed": topic })),
            )
                .into_response()
        }
        Ok(ses::Outcome::Nothing(what)) => {
            info!(message = %what, "SNS message taken, nothing to do");
            (StatusCode::OK, axum::Json(Applied::default())).into_response()
        }
        Err(ses::SesError::Refused(refusal)) => refused("ses", refusal),
        Err(ses::SesError::Upstream(why)) => {
            warn!(reason = %why, "SNS request not handled: the certificate or confirmation link could not be fetched");
            answer(StatusCode::BAD_GATEWAY, "could not reach SNS; retry later")
        }
    }
}

pub(super) async fn postmark_hook(State(receiver): State<Arc<Receiver>>, req: Request) -> Response {
    let taken = match take(&receiver, req).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    handle(receiver, "postmark", taken, |r, headers, body| {
        let (Some(config), Some(password)) = (&r.config.postmark, &r.secrets.postmark_password)
        else {
            return Err(Refusal::unauthorized("not configured"));
        };
        postmark::verify(&config.username, password, headers, body)
    })
    .await
}

pub(super) async fn mailgun_hook(State(receiver): State<Arc<Receiver>>, req: Request) -> Response {
    let taken = match take(&receiver, req).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    handle(receiver, "mailgun", taken, |r, _, body| {
        let Some(key) = &r.secrets.mailgun_key else {
            return Err(Refusal::unauthorized("not configured"));
        };
        mailgun::verify(key, r.config.max_age, now(), body)
    })
    .await
}

pub(super) async fn sendgrid_hook(State(receiver): State<Arc<Receiver>>, req: Request) -> Response {
    let taken = match take(&receiver, req).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    handle(receiver, "sendgrid", taken, |r, headers, body| {
        let Some(key) = &r.secrets.sendgrid_key else {
            return Err(Refusal::unauthorized("not configured"));
        };
        sendgrid::verify(key, r.config.max_age, now(), headers, body)
    })
    .await
}

pub(super) async fn generic_hook(State(receiver): State<Arc<Receiver>>, req: Request) -> Response {
    let taken = match take(&receiver, req).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    handle(receiver, "generic", taken, |r, headers, body| {
        let Some(secret) = &r.secrets.generic_secret else {
            return Err(Refusal::unauthorized("not configured"));
        };
        generic::verify(secret, r.config.max_age, now(), headers, body)
    })
    .await
}
