"""Outbound Microsoft Graph: app tokens and the calling API client."""
