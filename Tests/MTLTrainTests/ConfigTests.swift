import XCTest
@testable import MTLTrain
