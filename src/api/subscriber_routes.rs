//! The subscriber routes: list, get, create, rename, unsubscribe, resubscribe, erase.

use super::*;

pub(super) fn email_in_path(email: &str) -> Result<SubscriberEmail, ApiError> {
    SubscriberEmail::parse(email).map_err(|e| ApiError::field("email", e.to_string()))
}

pub(super) async fn list_subscribers(State(state): State<Arc<ApiState>>, uri: Uri) -> ApiResult {
    let q = query(&uri, &["status", "after", "limit"])?;
    let status = match q.get("status") {
        None => None,
        Some(s) => {
            Some(SubscriberStatus::parse(s).map_err(|e| ApiError::field("status", e.to_string()))?)
        }
    };
    let limit = limit(&q)?;
    let after = cursor(&q)?;
    let page = state
        .with_db(move |conn| {
            Ok(subscribers::page_after(
                conn,
                status,
                Some(crate::store::SubscriberId(after)),
                limit,
            )?)
        })
        .await?;
    let next = (page.len() == limit)
        .then(|| page.last().map(|s| s.id.0.to_string()))
        .flatten();
    ok(
        StatusCode::OK,
        json!({"data": page.iter().map(subscriber_json).collect::<Vec<_>>(), "next": next}),
    )
}

pub(super) async fn get_subscriber(
    State(state): State<Arc<ApiState>>,
    Path(email): Path<String>,
) -> ApiResult {
    let email = email_in_path(&email)?;
    let found = state
        .with_db(move |conn| Ok(subscribers::find(conn, &email)?))
        .await?;
    match found {
        Some(s) => ok(StatusCode::OK, subscriber_json(&s)),
        None => Err(ApiError::not_found("no subscriber has this address")),
    }
}

/// The JSON object of a request body, with only the `allowed` fields.
pub(super) fn object(body: &Bytes, allowed: &[&str]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::field("body", format!("is not JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(ApiError::field("body", "must be a JSON object"));
    };
    if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::field(
            k,
            format!("is not a field here; the fields are {}", allowed.join(", ")),
        ));
    }
    Ok(map)
}

pub(super) fn name_field(
    map: &Map<String, Value>,
) -> Result<Option<Option<SubscriberName>>, ApiError> {
    match map.get("name") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) => SubscriberName::parse(s)
            .map(Some)
            .map_err(|e| ApiError::field("name", e.to_string())),
        Some(_) => Err(ApiError::field("name", "must be a string or null")),
    }
}

pub(super) async fn create_subscriber(
    State(state): State<Arc<ApiState>>,
    body: Bytes,
) -> ApiResult {
    let map = object(&body, &["email", "name", "double_opt_in"])?;
    let email = match map.get("email") {
        Some(Value::String(s)) => {
            SubscriberEmail::parse(s).map_err(|e| ApiError::field("email", e.to_string()))?
        }
        Some(_) => return Err(ApiError::field("email", "must be a string")),
        None => return Err(ApiError::field("email", "is required")),
    };
    let name = name_field(&map)?.flatten();
    let double_opt_in = match map.get("double_opt_in") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::field("double_opt_in", "must be true or false")),
    };
    let signup = state.signup.clone();
    let (status, subscriber) = state
        .with_db(move |conn| {
            // A reader who asked to be forgotten is not brought back by another system.
            if let Some(erased) = crate::store::privacy::is_erased(conn, &email)? {
                return Err(ApiError {
                    status: StatusCode::CONFLICT,
                    code: "erased",
                    message: crate::store::privacy::refusal(email.as_str(), &erased),
                    field: Some("email".into()),
                });
            }
            if !double_opt_in {
                return match subscribers::add(conn, &email, name.as_ref(), SubscriberSource::Api)? {
                    AddOutcome::Added(s) => Ok((StatusCode::CREATED, s)),
                    AddOutcome::AlreadyListed(s) => Err(conflict(&s)),
                };
            }
            let outcome = store_signup::request_signup(
                conn,
                &SignupRequest {
                    email: &email,
                    name: name.as_ref(),
                    source: SubscriberSource::Api,
                    ip: None,
                    expire_after: signup.expire_after,
                    resend_after: signup.expire_after.min(Duration::from_secs(3600)),
                },
            )?;
            let found = subscribers::find(conn, &email)?
                .ok_or_else(|| ApiError::internal(anyhow::anyhow!("signup left no row")))?;
            match outcome {
                SignupOutcome::Queued { .. } | SignupOutcome::RecentlyMailed => {
                    Ok((StatusCode::ACCEPTED, found))
                }
                SignupOutcome::AlreadyActive | SignupOutcome::Refused => Err(conflict(&found)),
            }
        })
        .await?;
    state.confirmations.notify_one();
    state.announcements.notify_one();
    ok(status, subscriber_json(&subscriber))
}

pub(super) fn conflict(s: &Subscriber) -> ApiError {
    ApiError {
        status: StatusCode::CONFLICT,
        code: "already_listed",
        message: format!(
            "this address is already on the list with status {}; nothing was changed",
            s.status
        ),
        field: Some("email".into()),
    }
}

pub(super) async fn update_subscriber(
    State(state): State<Arc<ApiState>>,
    Path(email): Path<String>,
    body: Bytes,
) -> ApiResult {
    let email = email_in_path(&email)?;
    let map = object(&body, &["name"])?;
    let Some(name) = name_field(&map)? else {
        return Err(ApiError::field(
            "name",
            "is required (a string, or null to clear it)",
        ));
    };
    let updated = state
        .with_db(move |conn| Ok(subscribers::rename(conn, &email, name.as_ref())?))
        .await?;
    match updated {
        Some(s) => ok(StatusCode::OK, subscriber_json(&s)),
        None => Err(ApiError::not_found("no subscriber has this address")),
    }
}

pub(super) async fn unsubscribe(
    State(state): State<Arc<ApiState>>,
    Path(email): Path<String>,
) -> ApiResult {
    let email = email_in_path(&email)?;
    let changed = state
        .with_db(move |conn| {
            crate::store::in_write_transaction(conn, |conn| {
                let Some(s) = subscribers::find(conn, &email)? else {
                    return Err(ApiError::not_found("no subscriber has this address"));
                };
                if !matches!(
                    s.status,
                    SubscriberStatus::Active | SubscriberStatus::Pending
                ) {
                    return Ok(s);
                }
                if s.status == SubscriberStatus::Pending {
                    subscribers::set_status_by_id(conn, s.id, SubscriberStatus::Unsubscribed)?;
                }
                // The event (and, for an active reader, the status change) through the
                // one recording path: the announcement comes with it.
                events::record(
                    conn,
                    &NewEvent {
                        subscriber_id: s.id,
                        issue: events::latest_sent_issue(conn, s.id)?,
                        kind: EventKind::Unsubscribe(Channel::Api),
                        source: Source::Api,
                        status: None,
                        diagnostic: None,
                    },
                    Hygiene::default(),
                )?;
                subscribers::get(conn, s.id)?
                    .ok_or_else(|| ApiError::internal(anyhow::anyhow!("row vanished")))
            })
        })
        .await?;
    state.announcements.notify_one();
    ok(StatusCode::OK, subscriber_json(&changed))
}

pub(super) async fn resubscribe(
    State(state): State<Arc<ApiState>>,
    Path(email): Path<String>,
) -> ApiResult {
    let email = email_in_path(&email)?;
    let changed = state
        .with_db(move |conn| {
            crate::store::in_write_transaction(conn, |conn| {
                let Some(s) = subscribers::find(conn, &email)? else {
                    return Err(ApiError::not_found("no subscriber has this address"));
                };
                if s.status == SubscriberStatus::Pending {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "pending",
                        "this address has not confirmed its signup yet; only its confirmation link makes it active",
                    ));
                }
                match subscribers::set_status_by_id(conn, s.id, SubscriberStatus::Active)? {
                    StatusChange::Changed { subscriber, .. }
                    | StatusChange::Unchanged(subscriber) => Ok(subscriber),
                    StatusChange::NotFound => {
                        Err(ApiError::not_found("no subscriber has this address"))
                    }
                }
            })
        })
        .await?;
    state.announcements.notify_one();
    ok(StatusCode::OK, subscriber_json(&changed))
}

/// Erasing a reader belongs to the data-rights work (`store::privacy::erase`), which this
/// build does not have yet: the route answers 501 and changes nothing.
pub(super) async fn erase_subscriber(
    State(state): State<Arc<ApiState>>,
    Path(email): Path<String>,
) -> ApiResult {
    let email = email_in_path(&email)?;
    let erased = state
        .with_db(move |conn| {
            crate::store::privacy::erase(
                conn,
                email.as_str(),
                crate::store::privacy::Reason::Request,
            )
            .map_err(|e| match e {
                crate::store::privacy::EraseError::BadAddress { .. } => {
                    ApiError::field("email", e.to_string())
                }
                crate::store::privacy::EraseError::Store(e) => e.into(),
            })
        })
        .await?;
    match erased.subscriber {
        Some(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        None => Err(ApiError::not_found("no subscriber has this address")),
    }
}
