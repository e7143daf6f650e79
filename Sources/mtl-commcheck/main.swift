import MTLDist
