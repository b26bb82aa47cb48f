"""ConceptWorld: a procedurally generated concept world in which the whole paper runs end to end."""
