"""The kinds of pipeline sections: address rules and message filters (programs, modules)."""
