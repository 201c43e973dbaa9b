"""Step-up approval: on a path with `step_up`, an approval counts only after the approver signs
in afresh with the trust's OpenID Connect provider, as the same person, with MFA
(docs/step-up.md). `oidc` talks to the provider, `service` keeps the sign-ins and applies the
approval through the one decide use case, `pages` answers the browser, `flows` tells the
security channel of a refused sign-in in the words of `messages`."""
