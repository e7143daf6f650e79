print("mtl")
