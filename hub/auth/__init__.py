"""Who may publish, flush and subscribe (`--auth protected`).

- `decide.py`: grants, principals and the ONE decision function, `authorize`; pure.
- `verifiers.py`: credentials → principal: JWTs (secret, PEM key, JWKS), API keys.
- `tickets.py`: single-use, short-lived SSE tickets.
- `service.py`: `Auth`, what the transports call; reloads, open-stream expiry, counters.

Transports only extract credentials (`Credentials`) and map `Denied` to their errors.
"""
