use super::*;
use crate::storage::{AccountData, Accounts, UserDb};

fn el(s: &str) -> Element {
    Element::parse(s).unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rjabberd-pie-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// An account with every part the format carries, and every roster state.
fn juliet() -> Account {
    let creds = Credentials::from_password("r0meo&me", b"0123456789abcdef", 4096).unwrap();
    let mut romeo = RosterItem::new("romeo@example.org");
    romeo.name = Some("Romeo".into());
    romeo.groups = vec!["Montagues".into(), "Verona".into()];
    romeo.subscription = Subscription::Both;
    let mut nurse = RosterItem::new("nurse@example.org");
    nurse.ask = true;
    nurse.approved = true;
    nurse.pending_in = true;
    let paris = RosterItem {
        jid: "paris@example.org".into(),
        pending_in: true,
        listed: false,
        ..RosterItem::default()
    };
    let tybalt = RosterItem {
        jid: "tybalt@example.org".into(),
        subscription: Subscription::From,
        listed: false,
        ..RosterItem::default()
    };
    Account {
        name: "juliet".into(),
        password: None,
        scram: vec![creds.sha1, creds.sha256],
        roster: vec![romeo, nurse, tybalt, paris],
        offline: vec![
            el(
                "<message xmlns='jabber:client' from='romeo@example.org/orchard' to='juliet@example.org' type='chat'><body>first &amp; foremost</body><delay xmlns='urn:xmpp:delay' from='example.org' stamp='2026-12-01T17:10:46.073Z'/></message>",
            ),
            el(
                "<message xmlns='jabber:client' from='nurse@example.org' to='juliet@example.org'><body>second</body></message>",
            ),
        ],
        vcard: Some(el(
            "<vCard xmlns='vcard-temp'><FN>Juliet Capulet</FN><NICKNAME>J</NICKNAME></vCard>",
        )),
        private: vec![
            el("<prefs xmlns='example:prefs'><colour>red</colour></prefs>"),
            el(
                "<s:bookmarks xmlns:s='storage:bookmarks'><s:conference jid='balcony@muc.example.org'/></s:bookmarks>",
            ),
        ],
    }
}

#[test]
fn an_account_round_trips_through_its_user_element() {
    let a = juliet();
    let text = a.to_element().to_xml_string();
    let back = Account::from_element("example.org", &el(&text), NS_PIE).unwrap();
    assert_eq!(back, a, "{text}");
    // Written again, byte for byte the same.
    assert_eq!(back.to_element().to_xml_string(), text);
    // The unanswered request travels as XEP-0227 §4.8's presence, the pre-approval and the unlisted
    // item's state as attributes of the item.
    assert!(
        text.contains(
            "<presence xmlns='jabber:client' from='paris@example.org' type='subscribe'/>"
        )
    );
    assert!(!text.contains("jid='paris@example.org' subscription"));
    assert!(text.contains("jid='tybalt@example.org' subscription='from' listed='false'"));
    assert!(text.contains("ask='subscribe' approved='true'"));
}

/// A user as ejabberd 23.01 writes it (`ejabberdctl export_piefxis`; its password is `r0meo&me`):
/// SCRAM-SHA-1 with every value base64-encoded twice.
const EJABBERD_USER: &str = "<user name='juliet'><scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-1'><iter-count>4096</iter-count><salt>LzF6YjRpTEl1dTlpbUxCMFlTZnNBUT09</salt><server-key>NUFwcVBhUHEvTmNXTEhnWXcrUU96NURvLzRrPQ==</server-key><stored-key>YWo1cTJHUVRqcUtmZTFZQW4yaGVjMFdKcCtNPQ==</stored-key></scram-credentials><offline-messages><message to='juliet@example.org' from='romeo@example.org/orchard' type='chat' id='17162309107312754887' xmlns='jabber:client'><delay from='example.org' stamp='2026-12-01T17:10:46.073282Z' xmlns='urn:xmpp:delay'>Offline storage</delay><body>What light through yonder window breaks?</body><subject>Hark</subject></message></offline-messages><vCard xmlns='vcard-temp'><FN>Juliet Capulet</FN></vCard><query xmlns='jabber:iq:roster'><item subscription='both' name='Romeo' jid='romeo@example.org'><group>Montagues</group></item></query><query xmlns='jabber:iq:private'><prefs xmlns='example:prefs'><colour>red</colour></prefs></query></user>";

#[test]
fn ejabberd_users_and_both_base64_forms_of_scram_keys_are_read() {
    let a = Account::from_element("example.org", &el(EJABBERD_USER), NS_PIE).unwrap();
    assert_eq!(a.scram.len(), 1);
    let c = &a.scram[0];
    assert_eq!((c.hash, c.iterations, c.salt.len()), (Hash::Sha1, 4096, 16));
    // The keys are the password's, so the decoding is right.
    assert_eq!(
        &ScramCredential::derive(Hash::Sha1, "r0meo&me", &c.salt, 4096),
        c
    );
    // Written back in ejabberd's form, and in XEP-0227's (base64 once), it reads the same.
    let theirs = a.to_element_with(ScramEncoding::Ejabberd);
    assert_eq!(
        Account::from_element("example.org", &theirs, NS_PIE).unwrap(),
        a
    );
    assert!(
        theirs
            .to_xml_string()
            .contains("<salt>LzF6YjRpTEl1dTlpbUxCMFlTZnNBUT09</salt>")
    );
    let again = Account::from_element("example.org", &a.to_element(), NS_PIE).unwrap();
    assert_eq!(again, a);
    assert!(a.to_element().to_xml_string().contains(&format!(
        "<stored-key>{}</stored-key>",
        B64.encode(&c.stored_key)
    )));
    assert_eq!(a.roster[0].groups, vec!["Montagues".to_string()]);
    assert_eq!(a.offline.len(), 1);
    assert_eq!(a.private[0].attr("xmlns"), Some("example:prefs"));
    // Only SCRAM-SHA-1: SHA-256's keys are empty (no proof matches them), PLAIN checks SHA-1's.
    let (creds, notes) = credentials_for(&a, 4096).unwrap();
    assert!(creds.sha256.stored_key.is_empty());
    assert!(creds.verify_password("r0meo&me") && !creds.verify_password("romeo"));
    assert_eq!(notes.len(), 1);
}

#[test]
fn a_plaintext_password_becomes_scram_keys_of_both_hashes() {
    let a = Account::from_element(
        "example.org",
        &el("<user name='Romeo' password='j&lt;3'/>"),
        NS_PIE,
    )
    .unwrap();
    assert_eq!(a.name, "romeo", "the name is prepared");
    let (c, notes) = credentials_for(&a, 4096).unwrap();
    assert!(notes.is_empty());
    assert_eq!(c.sha1.iterations, 4096);
    assert_eq!(
        ScramCredential::derive(Hash::Sha256, "j<3", &c.sha256.salt, 4096),
        c.sha256
    );
    assert_eq!(
        ScramCredential::derive(Hash::Sha1, "j<3", &c.sha1.salt, 4096),
        c.sha1
    );
    // Exported, the password is not: the keys are.
    let out = read_back(&a, &c).to_element().to_xml_string();
    assert!(!out.contains("password") && out.contains("SCRAM-SHA-256"));
}

fn read_back(a: &Account, c: &Credentials) -> Account {
    let dir = temp_dir("readback");
    let db = UserDb::open(&dir).unwrap();
    write_account(&db, "example.org", a, c).unwrap();
    let back = read_account(&db, "example.org", &a.name).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    back
}

#[test]
fn bad_users_are_named_with_what_is_wrong() {
    let bad = |xml: &str, says: &str| {
        let e = Account::from_element("example.org", &el(xml), NS_PIE).unwrap_err();
        assert!(e.contains(says), "{xml}: {e}");
    };
    bad("<user password='x'/>", "without a name");
    bad(
        "<user name='a b@c'/>",
        "user `a b@c`: not a valid user name",
    );
    bad(
        "<user name='j'><query xmlns='jabber:iq:roster'><item jid='x@y/z'/></query></user>",
        "user j: `x@y/z` is not a bare JID",
    );
    bad(
        "<user name='j'><query xmlns='jabber:iq:roster'><item jid='x@y' subscription='remove'/></query></user>",
        "user j: roster item x@y: subscription `remove`",
    );
    bad(
        "<user name='j'><scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-1'><iter-count>4096</iter-count><salt>c2FsdA==</salt><server-key>!!</server-key><stored-key>AAAA</stored-key></scram-credentials></user>",
        "user j: SCRAM-SHA-1 <server-key/> is not base64",
    );
    bad(
        "<user name='j'><scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-256'><iter-count>1</iter-count><salt>c2FsdA==</salt><server-key>AAAA</server-key><stored-key>AAAA</stored-key></scram-credentials></user>",
        "neither 32 bytes",
    );
    bad(
        "<user name='j'><query xmlns='jabber:iq:private'><x xmlns='jabber:client'/></query></user>",
        "no namespace of its own",
    );
}

#[test]
fn the_store_gives_back_what_was_written_in_order() {
    let a = juliet();
    let creds = Credentials {
        sha1: a.scram[0].clone(),
        sha256: a.scram[1].clone(),
    };
    let back = read_back(&a, &creds);
    // The store keeps the roster in contact order.
    let mut want = a.clone();
    want.roster.sort_by(|x, y| x.jid.cmp(&y.jid));
    assert_eq!(back, want);
}

fn opts(overwrite: bool) -> ImportOptions {
    ImportOptions {
        overwrite,
        scram_iterations: 4096,
        hosts: vec!["example.org".into(), "other.example".into()],
    }
}

#[test]
fn export_then_import_loses_nothing_and_import_is_idempotent() {
    let dir = temp_dir("roundtrip");
    let (one, two) = (dir.join("one"), dir.join("two"));
    let db = UserDb::open(&one).unwrap();
    let a = juliet();
    let creds = Credentials {
        sha1: a.scram[0].clone(),
        sha256: a.scram[1].clone(),
    };
    write_account(&db, "example.org", &a, &creds).unwrap();
    let plain = Credentials::from_password("x", b"fedcba9876543210", 4096).unwrap();
    db.add("other.example", "mercutio", &plain).unwrap();
    let hosts = opts(false).hosts;
    let sums = export(&db, &dir.join("out1"), &hosts, ScramEncoding::Xep0227).unwrap();
    assert_eq!(sums[0].users + sums[1].users, 2);
    assert!(
        export(&db, &dir.join("out1"), &hosts, ScramEncoding::Xep0227).is_err(),
        "no file is replaced"
    );

    let db2 = UserDb::open(&two).unwrap();
    let mut lines = Vec::new();
    let (sums, failed) = import(&db2, &dir.join("out1"), &opts(false), &mut |l| {
        lines.push(l)
    })
    .unwrap();
    assert!(!failed, "{lines:?}");
    assert_eq!(sums[0].roster_items, 4);
    assert_eq!(sums[0].offline, 2);
    export(&db2, &dir.join("out2"), &hosts, ScramEncoding::Xep0227).unwrap();
    for f in ["server-data.xml", "example.org.xml", "other.example.xml"] {
        assert_eq!(
            std::fs::read(dir.join("out1").join(f)).unwrap(),
            std::fs::read(dir.join("out2").join(f)).unwrap(),
            "{f}"
        );
    }
    assert_eq!(
        db2.credentials("example.org", "juliet").unwrap(),
        Some(creds)
    );

    // Again: every account exists and is skipped, and says so; nothing changes.
    lines.clear();
    let (sums, failed) = import(&db2, &dir.join("out1"), &opts(false), &mut |l| {
        lines.push(l)
    })
    .unwrap();
    assert!(!failed);
    assert_eq!((sums[0].users, sums[0].skipped), (0, 1));
    assert!(
        lines
            .iter()
            .any(|l| l == "juliet@example.org: exists, skipped (--overwrite replaces it)")
    );
    assert_eq!(
        db2.data_count("example.org", "juliet", layout::OFFLINE)
            .unwrap(),
        2
    );
    // With --overwrite: replaced, not doubled.
    let (sums, _) = import(&db2, &dir.join("out1"), &opts(true), &mut |_| {}).unwrap();
    assert_eq!(sums[0].users, 1);
    assert_eq!(
        db2.data_count("example.org", "juliet", layout::OFFLINE)
            .unwrap(),
        2
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_user_is_not_imported_at_all_and_the_others_are() {
    let dir = temp_dir("bad");
    let file = dir.join("in.xml");
    std::fs::write(
        &file,
        "<?xml version='1.0'?>\n<server-data xmlns='urn:xmpp:pie:0'>\n  <host jid='example.org'>\n    <user name='good' password='pw'/>\n    <user name='bad' password='pw'>\n      <vCard xmlns='vcard-temp'><FN>Bad</FN></vCard>\n      <query xmlns='jabber:iq:roster'><item jid='not a jid@@'/></query>\n    </user>\n  </host>\n</server-data>\n",
    )
    .unwrap();
    let db = UserDb::open(&dir.join("data")).unwrap();
    let mut lines = Vec::new();
    let (sums, failed) = import(&db, &file, &opts(false), &mut |l| lines.push(l)).unwrap();
    assert!(failed);
    assert_eq!((sums[0].users, sums[0].failed), (1, 1));
    let said = lines.join("\n");
    assert!(
        said.contains("in.xml: host example.org: user bad: `not a jid@@` is not a JID"),
        "{said}"
    );
    assert!(db.exists("example.org", "good").unwrap());
    assert!(!db.exists("example.org", "bad").unwrap());
    assert_eq!(
        db.data_count("example.org", "bad", layout::VCARD).unwrap(),
        0
    );

    // A malformed file and a host not configured stop the import before anything is written.
    std::fs::write(
        &file,
        "<host xmlns='urn:xmpp:pie:0' jid='example.org'><user name='x'>",
    )
    .unwrap();
    let e = import(&db, &file, &opts(false), &mut |_| {}).err().unwrap();
    assert!(e.contains("in.xml: not a well-formed XML document"), "{e}");
    std::fs::write(
        &file,
        "<host xmlns='urn:xmpp:pie:0' jid='elsewhere.example'/>",
    )
    .unwrap();
    let e = import(&db, &file, &opts(false), &mut |_| {}).err().unwrap();
    assert!(
        e.contains("host elsewhere.example is not configured here"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_directory_with_two_exports_is_refused() {
    let dir = temp_dir("two");
    std::fs::write(
        dir.join("h.xml"),
        "<host xmlns='urn:xmpp:pie:0' jid='example.org'/>",
    )
    .unwrap();
    for n in ["a.xml", "b.xml"] {
        std::fs::write(
            dir.join(n),
            "<server-data xmlns='urn:xmpp:pie:0' xmlns:xi='http://www.w3.org/2001/XInclude'><xi:include href='h.xml'/></server-data>",
        )
        .unwrap();
    }
    let db = UserDb::open(&dir.join("data")).unwrap();
    let e = import(&db, &dir, &opts(false), &mut |_| {}).err().unwrap();
    assert!(e.contains("several exports (a.xml, b.xml)"), "{e}");
    // One index, and a file it does not include: refused rather than left out.
    std::fs::remove_file(dir.join("b.xml")).unwrap();
    std::fs::write(
        dir.join("prosody@example.org.xml"),
        "<server-data xmlns='urn:xmpp:pie:0'><host jid='example.org'><user name='prosody' password='pw'/></host></server-data>",
    )
    .unwrap();
    let e = import(&db, &dir, &opts(false), &mut |_| {}).err().unwrap();
    assert!(
        e.contains("prosody@example.org.xml: not included by the index"),
        "{e}"
    );
    assert!(!db.exists("example.org", "prosody").unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A user as Prosody 0.12.3's migrator writes it (`mod_storage_xep0227`, from `internal_hashed`
/// accounts; the password is `r0meo&me`): one `<server-data/>` per account, SCRAM-SHA-1 values base64
/// once with the salt a UUID's text, the pending request's `<presence/>` in the file's namespace
/// rather than jabber:client, the roster version kept as an attribute.
const PROSODY_JULIET: &str = "<server-data xmlns='urn:xmpp:pie:0'><host jid='example.net'><user name='juliet'><scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-1'><server-key>dw0x4sxEGGZHjkdI/b//rl3YYd0=</server-key><stored-key>H1OqJxg4KY+D0Q1oFdnJ9lNdeV0=</stored-key><iter-count>10000</iter-count><salt>NjNkM2QxMGYtNzU1Zi00ZjAxLWIzZjktNzkwZDJhMTE3OTJm</salt></scram-credentials><query xmlns='jabber:iq:roster' version='3'><item name='Romeo' subscription='both' jid='romeo@example.net'><group>Montagues</group></item><item subscription='none' ask='subscribe' jid='nurse@localhost'/></query><presence type='subscribe' from='paris@example.net'/><vCard xmlns='vcard-temp'><FN>Juliet Capulet</FN><NICKNAME>Jules &amp; co</NICKNAME></vCard><query xmlns='jabber:iq:private'><prefs xmlns='example:prefs'><colour>red</colour></prefs></query></user></host></server-data>";

/// Prosody's `internal_plain` accounts: the password as an attribute. Account properties XEP-0227 has
/// no element for travel as attributes in Prosody's own namespace; PEP nodes and the MAM archive as
/// `<pubsub/>` and `<archive/>`.
const PROSODY_NURSE: &str = "<server-data xmlns='urn:xmpp:pie:0'><host jid='example.net'><user name='nurse' password='n0 secret' xmlns:ns1='http://prosody.im/protocol/extended-xep0227' ns1:created='1764612000'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='urn:xmpp:avatar:metadata'><item id='current'><metadata xmlns='urn:xmpp:avatar:metadata'/></item></items></pubsub><archive xmlns='urn:xmpp:pie:0#mam'><result xmlns='urn:xmpp:mam:2' id='1'><forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='2026-12-01T19:00:00Z'/><message xmlns='jabber:client' from='juliet@example.net/r' to='nurse@example.net'><body>Anon!</body></message></forwarded></result></archive></user></host></server-data>";

fn prosody_opts() -> ImportOptions {
    ImportOptions {
        hosts: vec!["example.net".into(), "localhost".into()],
        ..opts(false)
    }
}

#[test]
fn prosody_migrator_files_import_whole() {
    let dir = temp_dir("prosody");
    let files = dir.join("xep0227");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("juliet@example.net.xml"), PROSODY_JULIET).unwrap();
    std::fs::write(files.join("nurse@example.net.xml"), PROSODY_NURSE).unwrap();
    let db = UserDb::open(&dir.join("data")).unwrap();
    let mut lines = Vec::new();
    // The directory, as the operator is told to import it: every account's file, none an index.
    let (sums, failed) = import(&db, &files, &prosody_opts(), &mut |l| lines.push(l)).unwrap();
    assert!(!failed, "{lines:?}");
    assert_eq!(sums.len(), 1, "one summary for the host of both files");
    assert_eq!(
        (
            sums[0].users,
            sums[0].roster_items,
            sums[0].vcards,
            sums[0].private
        ),
        (2, 3, 1, 1)
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("juliet@example.net: imported (3 roster items, 0 offline messages, 1 vCard, 1 private items); SCRAM-SHA-1 only")),
        "{lines:?}"
    );

    // The keys are the password's: the salt is the UUID text Prosody salts with, as bytes.
    let creds = db.credentials("example.net", "juliet").unwrap().unwrap();
    assert_eq!(creds.sha1.salt, b"63d3d10f-755f-4f01-b3f9-790d2a11792f");
    assert_eq!(
        ScramCredential::derive(Hash::Sha1, "r0meo&me", &creds.sha1.salt, 10000),
        creds.sha1
    );
    assert!(creds.verify_password("r0meo&me") && !creds.verify_password("r0meo"));
    let nurse = db.credentials("example.net", "nurse").unwrap().unwrap();
    assert!(nurse.verify_password("n0 secret"));
    assert!(
        !nurse.sha256.stored_key.is_empty(),
        "both hashes from a password"
    );

    let back = read_account(&db, "example.net", "juliet").unwrap();
    let by_jid = |j: &str| back.roster.iter().find(|i| i.jid == j).unwrap().clone();
    let romeo = by_jid("romeo@example.net");
    assert_eq!(
        (
            romeo.name.as_deref(),
            romeo.subscription,
            romeo.groups.clone()
        ),
        (
            Some("Romeo"),
            Subscription::Both,
            vec!["Montagues".to_string()]
        )
    );
    let nurse_item = by_jid("nurse@localhost");
    assert!(nurse_item.ask && nurse_item.listed && !nurse_item.pending_in);
    let paris = by_jid("paris@example.net");
    assert!(paris.pending_in && !paris.listed, "{paris:?}");
    let card = back.vcard.unwrap();
    assert_eq!(card.child("NICKNAME").unwrap().text(), "Jules & co");
    assert_eq!(
        back.private[0].to_xml_string(),
        "<prefs xmlns='example:prefs'><colour>red</colour></prefs>"
    );
    // Nothing of PEP or the archive is carried, and the account is the rest.
    let nurse_back = read_account(&db, "example.net", "nurse").unwrap();
    assert!(nurse_back.roster.is_empty() && nurse_back.offline.is_empty());
    assert!(nurse_back.vcard.is_none() && nurse_back.private.is_empty());

    // One of the files named alone imports only its account.
    let db2 = UserDb::open(&dir.join("data2")).unwrap();
    let (sums, _) = import(
        &db2,
        &files.join("nurse@example.net.xml"),
        &prosody_opts(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(sums[0].users, 1);
    assert!(!db2.exists("example.net", "juliet").unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn prosody_sha256_keys_labelled_sha1_are_read_as_sha256() {
    // Prosody 0.12.3 with `password_hash = "SHA-256"`, through its migrator; the password is `r0meo&me`.
    let file = "<server-data xmlns='urn:xmpp:pie:0'><host jid='example.net'><user name='juliet'><scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-1'><server-key>FN1lmfCv4Rwu1tAQLzpkzBkM+bIABItsTrJOzp2Nt14=</server-key><stored-key>WV0ob2rCSnoUx7HJyVOmAx6hr1rPNeL0Ei9Sfiv5d0w=</stored-key><iter-count>10000</iter-count><salt>YTA5OGE2MWEtNGEzNC00Y2M0LTlmNTUtMzA5YjlkOGVkM2Rk</salt></scram-credentials></user></host></server-data>";
    let root = el(file);
    let user = root
        .child_elements()
        .next()
        .unwrap()
        .child_elements()
        .next()
        .unwrap();
    let a = Account::from_element("example.net", user, NS_PIE).unwrap();
    assert_eq!(a.scram.len(), 1);
    let c = &a.scram[0];
    assert_eq!(
        &ScramCredential::derive(Hash::Sha256, "r0meo&me", &c.salt, 10000),
        c
    );
    let (creds, notes) = credentials_for(&a, 4096).unwrap();
    assert!(creds.sha1.stored_key.is_empty() && creds.verify_password("r0meo&me"));
    assert_eq!(notes.len(), 1, "{notes:?}");
    // A key of neither length is still refused: a byte short of SHA-256's.
    let short = file.replace(
        "FN1lmfCv4Rwu1tAQLzpkzBkM+bIABItsTrJOzp2Nt14=",
        "FN1lmfCv4Rwu1tAQLzpkzBkM+bIABItsTrJOzp2Ntw==",
    );
    let root = el(&short);
    let user = root
        .child_elements()
        .next()
        .unwrap()
        .child_elements()
        .next()
        .unwrap();
    let e = Account::from_element("example.net", user, NS_PIE).unwrap_err();
    assert!(
        e.contains("SCRAM-SHA-1 keys are neither 20 bytes nor base64 of 20 bytes"),
        "{e}"
    );
}

#[test]
fn a_bad_prosody_file_is_named_and_stops_the_import() {
    let dir = temp_dir("prosody-bad");
    std::fs::write(dir.join("juliet@example.net.xml"), PROSODY_JULIET).unwrap();
    // Cut short, as a migrator that died half-way would leave it.
    std::fs::write(
        dir.join("romeo@example.net.xml"),
        &PROSODY_JULIET.replace("juliet", "romeo")[..200],
    )
    .unwrap();
    let db = UserDb::open(&dir.join("data")).unwrap();
    let e = import(&db, &dir, &prosody_opts(), &mut |_| {})
        .err()
        .unwrap();
    assert!(
        e.contains("romeo@example.net.xml: not a well-formed XML document"),
        "{e}"
    );
    assert!(
        !db.exists("example.net", "juliet").unwrap(),
        "nothing written"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same files from either backend: SQLite → files → PostgreSQL → files, byte for byte.
#[test]
#[cfg_attr(rjabberd_skip_pg, ignore = "PostgreSQL not installed (see README)")]
fn postgres_gives_the_same_files_as_sqlite() {
    use crate::storage::postgres::{PgStore, Target, migrate};
    let Some(pg) = crate::storage::throwaway_pg::PgInstance::start() else {
        return;
    };
    let target = Target::new(&pg.create_db("piefxis"), None).unwrap();
    migrate(&target).unwrap();
    let postgres = PgStore::open(target).unwrap();
    let dir = temp_dir("pg");
    let sqlite = UserDb::open(&dir.join("data")).unwrap();
    let a = juliet();
    let creds = Credentials {
        sha1: a.scram[0].clone(),
        sha256: a.scram[1].clone(),
    };
    write_account(&sqlite, "example.org", &a, &creds).unwrap();
    let hosts = vec!["example.org".to_string()];
    export(&sqlite, &dir.join("out1"), &hosts, ScramEncoding::Xep0227).unwrap();
    let (_, failed) = import(&postgres, &dir.join("out1"), &opts(false), &mut |_| {}).unwrap();
    assert!(!failed);
    export(&postgres, &dir.join("out2"), &hosts, ScramEncoding::Xep0227).unwrap();
    for f in ["server-data.xml", "example.org.xml"] {
        assert_eq!(
            std::fs::read(dir.join("out1").join(f)).unwrap(),
            std::fs::read(dir.join("out2").join(f)).unwrap(),
            "{f}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
