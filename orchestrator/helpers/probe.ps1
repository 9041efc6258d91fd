<#
.SYNOPSIS
    keyfleet probe helper (keyfleet doctor): reports what this server offers, changes nothing.
.DESCRIPTION
    Sent after common.ps1 as one script. -Params: tool_path; needs no secret. Reports the computer
    name, whether the WinRM user is a local administrator, the SCSM role and version found in the
    registry, where SecureStorageBackup.exe is (tool_path, else known install locations) and its
    file version, the free space of the temporary folder, and the PowerShell version.
#>
$tool = Find-Tool
$toolVersion = $null
if ($tool) { $toolVersion = (Get-Item -LiteralPath $tool).VersionInfo.FileVersion }
$temp = [IO.Path]::GetTempPath()
$drive = New-Object IO.DriveInfo ([IO.Path]::GetPathRoot($temp))
return @{
    computer_name      = $env:COMPUTERNAME
    admin              = Test-Administrator
    role               = Get-ScsmRole
    version            = Get-ScsmVersion
    tool_path          = $tool
    tool_version       = $toolVersion
    temp_path          = $temp
    temp_free_bytes    = $drive.AvailableFreeSpace
    powershell_version = $PSVersionTable.PSVersion.ToString()
    helper_version     = $HelperVersion
}
