//! The control socket a running hub serves for `cloudpc status` (JSON, one request per connection).
