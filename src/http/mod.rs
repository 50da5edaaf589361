//! The HTTP surface: one module per route family, plus the relay body of proxied responses.

pub mod admin;
pub mod openai;
pub mod ops;
pub mod relay;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::errors::ApiError;

/// Every route of the broker; shared by `main` and anything else that builds the app.
pub fn configure(cfg: &mut web::ServiceConfig) {
    openai::configure(cfg);
    admin::configure(cfg);
    ops::configure(cfg);
}

/// Unknown routes answer in the same error shape as everything else.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    let err = ApiError::not_found(format!("no route for {} {}", req.method(), req.path()));
    actix_web::ResponseError::error_response(&err)
}
