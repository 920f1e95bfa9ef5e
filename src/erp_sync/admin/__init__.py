"""The queue admin pages under ``/admin/queues`` (Bull Board's job, inside our service).

Off unless ENABLE_BULLBOARD=true; HTTP Basic auth with a Redis-backed lockout; every
state-changing action is a POST carrying a CSRF token. See docs/admin.md.
"""
