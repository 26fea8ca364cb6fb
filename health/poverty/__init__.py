"""Illness-poverty (因病致贫 / 因病返贫): households, their medical costs, explainable flags.

* ``households`` — a household (一户一档案) read from its FHIR Group;
* ``costs`` — what each bill (ExplanationOfBenefit, Claim, Invoice) cost and who paid it;
* ``rules`` and ``rules.toml`` — the rule set the health commission edits, versioned;
* ``assessment`` — the five rules applied to one household, every figure kept;
* ``flags`` — the Flag on the household and the RiskAssessment holding the evidence;
* ``repository`` — every query, over the record store's index tables;
* ``service`` — full and incremental recompute, in batches, under the households' locks;
* ``listener`` — the change-feed listener that ``health serve`` runs.
"""
