"""Threat models and adaptive attacks: poisoned training sets, backdoors, jailbreak and
perturbation evasion, healer attacks. They sit above ``detect`` because building
confirmed-toxic replies scores texts with a detector."""
