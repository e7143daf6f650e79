import MTLCore
