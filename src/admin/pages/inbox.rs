//! The admin page's Inbox tab: the files devices dropped on the Cloud PC with LocalSend.

use std::sync::Arc;

use maud::html as m;

use super::{bytes, call, csrf_field, page, Admin, Who};
use crate::api::{ApiError, Manage};

/// The inbox: each file with its size, sender and time, and a button that removes it.
pub(super) async fn inbox(a: &Arc<Admin>, who: &Who) -> Result<String, ApiError> {
    let files = call(a, |c| c.drops()).await?;
    let csrf = csrf_field(a, who);
    let body = m! {
        h2 { "Inbox" }
        p { "Files your devices sent to “Cloud PC” with LocalSend. They are encrypted on the Cloud PC; "
            code { "cloudpc drop get ID" } " writes one out." }
        @if files.is_empty() {
            p.muted { "No files." }
        } @else {
            table.inbox {
                tr { th { "Name" } th { "Size" } th { "From" } th { "Received" } th { "ID" } th {} }
                @for f in &files {
                    tr {
                        td.name { (f.name) }
                        td { (bytes(f.size)) }
                        td { (f.from) }
                        td { (super::when(Some(f.received_at * 1000))) }
                        td { code { (f.id) } }
                        td {
                            form method="post" action="/inbox/remove" class="inline" {
                                (csrf)
                                input type="hidden" name="id" value=(f.id);
                                button type="submit" { "Remove" }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(a, who, "Inbox", body))
}
