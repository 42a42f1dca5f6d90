//! A condition's message, decided cheaply and written out when read.
//!
//! The monitor decides a condition on the notification thread, where every microsecond
//! delays the answer NodeGetVolumeStats gives. A [`Message`] holds what the text is made of
//! (the facts it names), not the text: deciding, comparing and publishing one costs no
//! formatting. The text is rendered the first time someone reads it (a gRPC reply, a log
//! line, an Event) and kept, so every later read is a borrow.

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

/// What a message is made of: compared by value, rendered by `Display`. Equal values must
/// render the same text, and values that render the same text should be equal (own the
/// parts as they are printed), so comparing without rendering means what comparing the texts
/// would.
pub trait Describe: fmt::Display + fmt::Debug + Eq + Send + Sync + 'static {}

impl<D: fmt::Display + fmt::Debug + Eq + Send + Sync + 'static> Describe for D {}

/// A human-readable message, shared (cloning it is a reference count) and rendered once, on
/// first read. Two messages are equal when they say the same thing.
#[derive(Clone)]
pub struct Message(Arc<dyn Render>);

impl Message {
    /// A message made of `what`, rendered when first read.
    pub fn new<D: Describe>(what: D) -> Self {
        Self(Arc::new(Lazy {
            what,
            text: OnceLock::new(),
        }))
    }

    /// A fixed text (no allocation).
    pub fn fixed(text: &'static str) -> Self {
        Self(Arc::new(Text(Cow::Borrowed(text))))
    }

    /// The text (rendered now if nobody has read it yet).
    pub fn as_str(&self) -> &str {
        self.0.text()
    }
}

impl Message {
    /// The empty message (shared: no allocation).
    pub fn empty() -> Self {
        static EMPTY: OnceLock<Message> = OnceLock::new();
        EMPTY.get_or_init(|| Self::fixed("")).clone()
    }
}

impl Default for Message {
    fn default() -> Self {
        Self::empty()
    }
}

impl From<String> for Message {
    fn from(s: String) -> Self {
        Self(Arc::new(Text(Cow::Owned(s))))
    }
}

impl From<&str> for Message {
    fn from(s: &str) -> Self {
        Self::from(s.to_owned())
    }
}

impl Deref for Message {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Message {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.same(&*other.0)
    }
}

impl Eq for Message {}

impl PartialEq<str> for Message {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Message {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Message {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl From<Message> for String {
    fn from(m: Message) -> String {
        m.as_str().to_owned()
    }
}

trait Render: Send + Sync {
    fn text(&self) -> &str;
    /// The parts, for a comparison without rendering (`None` for a plain text).
    fn what(&self) -> Option<&dyn Any>;
    fn same(&self, other: &dyn Render) -> bool;
}

struct Lazy<D> {
    what: D,
    text: OnceLock<Box<str>>,
}

impl<D: Describe> Render for Lazy<D> {
    fn text(&self) -> &str {
        self.text
            .get_or_init(|| self.what.to_string().into_boxed_str())
    }

    fn what(&self) -> Option<&dyn Any> {
        Some(&self.what)
    }

    fn same(&self, other: &dyn Render) -> bool {
        match other.what().and_then(|o| o.downcast_ref::<D>()) {
            Some(o) => *o == self.what,
            // Made differently: compare what they say.
            None => self.text() == other.text(),
        }
    }
}

struct Text(Cow<'static, str>);

impl Render for Text {
    fn text(&self) -> &str {
        &self.0
    }

    fn what(&self) -> Option<&dyn Any> {
        None
    }

    fn same(&self, other: &dyn Render) -> bool {
        self.0 == other.text()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static RENDERED: AtomicUsize = AtomicUsize::new(0);

    #[derive(Debug, PartialEq, Eq)]
    struct Gone(u32);

    impl fmt::Display for Gone {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            RENDERED.fetch_add(1, Ordering::Relaxed);
            write!(f, "namespace {} is gone", self.0)
        }
    }

    #[test]
    fn a_message_is_rendered_once_on_first_read_and_compared_without_rendering() {
        let a = Message::new(Gone(1));
        let b = Message::new(Gone(1));
        let c = Message::new(Gone(2));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            RENDERED.load(Ordering::Relaxed),
            0,
            "comparing renders nothing"
        );
        let shared = a.clone();
        assert_eq!(a.as_str(), "namespace 1 is gone");
        assert_eq!(&*shared, "namespace 1 is gone");
        assert_eq!(
            RENDERED.load(Ordering::Relaxed),
            1,
            "a clone shares the rendered text"
        );
    }

    #[derive(Debug, PartialEq, Eq)]
    struct Lost(u32);

    impl fmt::Display for Lost {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "namespace {} is gone", self.0)
        }
    }

    #[test]
    fn a_plain_text_equals_a_rendered_message_that_says_the_same() {
        let lazy = Message::new(Lost(3));
        let text = Message::from("namespace 3 is gone");
        assert_eq!(lazy, text);
        assert_eq!(text, lazy);
        assert_ne!(Message::from("other"), lazy);
        assert_eq!(text, "namespace 3 is gone");
        assert_eq!(Message::fixed("namespace 3 is gone"), lazy);
        assert_eq!(String::from(lazy), "namespace 3 is gone");
    }
}
