//! The local router (ejabberd_local): stanzas addressed to the server itself (a served host, or a
//! resource of it). IQ requests go to the `ejabberd_local` IQ handlers of the modules; a message from a
//! session has nobody to read it and is answered `service-unavailable`; results, errors and presence need
//! no answer.

use std::rc::Rc;
use std::sync::Arc;

use super::{Origin, error};
use crate::modules::iq::{self, Component};
use crate::proto::errors::StanzaErrorCondition;
use crate::proto::jid::JidView;
use crate::proto::xml::{Stanza, StanzaKind};
use crate::shard::Shard;
use crate::sm::deliver::is_request;

pub fn route(
    shard: &Rc<Shard>,
    origin: Origin<'_>,
    stanza: &Stanza,
    from: &Arc<str>,
    to: JidView<'_>,
) {
    if is_request(stanza) {
        iq::dispatch(
            &shard.ctx(),
            Component::Local,
            to.domain,
            stanza,
            from,
            to.text,
        );
    } else if stanza.kind() == StanzaKind::Message && matches!(origin, Origin::Session(_)) {
        error(
            shard,
            origin,
            stanza,
            from,
            to.text,
            StanzaErrorCondition::ServiceUnavailable,
        );
    }
}
