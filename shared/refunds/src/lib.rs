//! `wxrefund`: the product core shared by the Lambda functions and the local stack.
