"""The configuration: the rule table every key is checked against, tlexp's errors, the key=value CLI."""
