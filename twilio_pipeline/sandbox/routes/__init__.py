"""The sandbox's request handlers, one module per Twilio API (and one for the sandbox's own admin
endpoints). Each is a mixin of `SandboxApp`, which owns the route table, auth, limits and faults."""
