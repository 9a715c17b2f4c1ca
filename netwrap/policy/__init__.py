"""Network policy: the rule grammar, the policy model, nftables rendering, the runtime and the flow log."""
